// rnnext._C._cpu_plan: the CPU planner's choice for one call, reported to Python (the benchmark
// prints it per row; the tests check that RNNEXT_CPU_PATH is obeyed); _cpu_directions_at_once: the
// stack's rule for a bidirectional layer.
#include <Python.h>

#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <ATen/Dispatch.h>

#include <algorithm>
#include <string>

#include "blas.h"
#include "gemm.h"
#include "kernels.h"
#include "plan.h"
#include "plan_py.h"

namespace rnnext {
namespace cpu {
namespace {

// _cpu_plan(T, B, I, H, dtype, packed, backward) -> "name: reason; the GEMMs over all rows in ..."
PyObject* cpu_plan(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  long long T = 0, B = 0, I = 0, H = 0;
  PyObject* dtype = nullptr;
  int packed = 0, backward = 0;
  if (!PyArg_ParseTuple(args, "LLLLOpp", &T, &B, &I, &H, &dtype, &packed, &backward)) {
    return nullptr;
  }
  TORCH_CHECK_TYPE(THPDtype_Check(dtype), "_cpu_plan: dtype must be a torch.dtype");
  const auto st = reinterpret_cast<THPDtype*>(dtype)->scalar_type;
  TORCH_CHECK(st == at::kFloat || st == at::kDouble,
              "_cpu_plan: the CPU kernels support float32 and float64, got ", st);
  TORCH_CHECK(T >= 0 && B >= 0 && I >= 0 && H >= 0, "_cpu_plan: sizes must be >= 0");
  (void)packed;  // the plan depends on the rows per step only: N = T * B is taken as given
  Shape s;
  s.T = T;
  s.B = B;
  s.N = T * B;
  s.I = I;
  s.H = H;
  s.backward = backward != 0;
  s.elem_size = static_cast<int>(c10::elementSize(st));
  s.threads = at::get_num_threads();
  const bool vec = std::string(step_kernel_isa()) != "base";
  const Plan p = make_plan(s, vec);
  const auto whose = [](bool own) { return own ? "rnnext's kernel" : "the BLAS"; };
  std::string text = std::string(path_name(p.path)) + ": " + p.reason +
                     "; the GEMMs over all rows in " + whose(p.own_gemm);
  if (p.own_weight_gemm != p.own_gemm) {
    text += std::string(", the weight gradients' in ") + whose(p.own_weight_gemm);
  }
  text += std::string(" (") + p.gemm_reason + ")";
  return PyUnicode_FromString(text.c_str());
  END_HANDLE_TH_ERRORS
}

// _cpu_gemm_tn(a, b, c, accumulate, own): c = a^T b (+ c) through own_gemm_tn (own) or the BLAS,
// in place; the weight gradients' GEMM, for its tests and measurements.
PyObject* cpu_gemm_tn(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *pa = nullptr, *pb = nullptr, *pc = nullptr;
  int accumulate = 0, own = 1;
  if (!PyArg_ParseTuple(args, "OOOpp", &pa, &pb, &pc, &accumulate, &own)) return nullptr;
  TORCH_CHECK_TYPE(THPVariable_Check(pa) && THPVariable_Check(pb) && THPVariable_Check(pc),
                   "_cpu_gemm_tn: a, b and c must be tensors");
  const at::Tensor& a = THPVariable_Unpack(pa);
  const at::Tensor& b = THPVariable_Unpack(pb);
  const at::Tensor& c = THPVariable_Unpack(pc);
  for (const at::Tensor* t : {&a, &b, &c}) {
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 2 && t->scalar_type() == a.scalar_type() &&
                    (t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble) &&
                    t->stride(1) == 1 && t->stride(0) >= std::max<int64_t>(1, t->size(1)),
                "_cpu_gemm_tn: a, b, c must be 2-D CPU float32 or float64 tensors of one dtype "
                "with unit column stride");
  }
  TORCH_CHECK(a.size(0) == b.size(0) && c.size(0) == a.size(1) && c.size(1) == b.size(1),
              "_cpu_gemm_tn: sizes do not match: a ", a.sizes(), ", b ", b.sizes(), ", c ", c.sizes());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "_cpu_gemm_tn", [&] {
    const int64_t m = a.size(1), n = b.size(1), k = a.size(0);
    if (own) {
      own_gemm_tn<scalar_t>(m, n, k, a.data_ptr<scalar_t>(), a.stride(0), b.data_ptr<scalar_t>(),
                            b.stride(0), accumulate != 0, c.data_ptr<scalar_t>(), c.stride(0));
    } else {
      gemm_tn(m, n, k, a.data_ptr<scalar_t>(), a.stride(0), b.data_ptr<scalar_t>(), b.stride(0),
              scalar_t(accumulate ? 1 : 0), c.data_ptr<scalar_t>(), c.stride(0));
    }
  });
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// _cpu_directions_at_once(rows, I, H) -> bool: cpu::concurrent_directions at the current thread
// count.
PyObject* cpu_directions_at_once(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  long long rows = 0, I = 0, H = 0;
  if (!PyArg_ParseTuple(args, "LLL", &rows, &I, &H)) return nullptr;
  return PyBool_FromLong(concurrent_directions(at::get_num_threads(), rows, I, H) ? 1 : 0);
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_cpu_plan", cpu_plan, METH_VARARGS,
     "_cpu_plan(T, B, I, H, dtype, packed, backward) -> 'path: reason; the GEMMs over all rows in "
     "...': the CPU path that rnn_forward (backward=False) or rnn_backward (backward=True) takes "
     "for that shape at the current torch.get_num_threads() (RNNEXT_CPU_PATH included; N = T * B "
     "rows), and where it runs the GEMMs over all rows, and why (RNNEXT_CPU_GEMM included)."},
    {"_cpu_directions_at_once", cpu_directions_at_once, METH_VARARGS,
     "_cpu_directions_at_once(rows, I, H) -> bool: whether a bidirectional layer of `rows` rows "
     "(T * B, or the packed rows), I inputs and H hidden features runs its two directions at once, "
     "one thread each, at the current torch.get_num_threads(), on a call that records no graph "
     "(csrc/stack.cpp)."},
    {"_cpu_gemm_tn", cpu_gemm_tn, METH_VARARGS,
     "_cpu_gemm_tn(a, b, c, accumulate, own) -> None: c = a^T b (+ c when accumulate) in place, "
     "through the micro-kernel (own) or the BLAS: the CPU weight gradients' GEMM."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* plan_methods() { return methods; }

}  // namespace cpu
}  // namespace rnnext
