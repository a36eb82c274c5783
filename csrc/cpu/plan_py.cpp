// rnnext._C._cpu_plan: the CPU planner's choice for one call, reported to Python (the benchmark
// prints it per row; the tests check that RNNEXT_CPU_PATH is obeyed).
#include <Python.h>

#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>

#include <string>

#include "kernels.h"
#include "plan.h"
#include "plan_py.h"

namespace rnnext {
namespace cpu {
namespace {

// _cpu_plan(T, B, I, H, dtype, packed, backward) -> "name: reason"
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
  const std::string text = std::string(path_name(p.path)) + ": " + p.reason;
  return PyUnicode_FromString(text.c_str());
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_cpu_plan", cpu_plan, METH_VARARGS,
     "_cpu_plan(T, B, I, H, dtype, packed, backward) -> 'path: reason': the CPU path that "
     "rnn_forward (backward=False) or rnn_backward (backward=True) takes for that shape at the "
     "current torch.get_num_threads() (RNNEXT_CPU_PATH included; N = T * B rows)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* plan_methods() { return methods; }

}  // namespace cpu
}  // namespace rnnext
