// rnnext._C._cuda_path(dtype, B, H, backward) -> the CUDA planner's choice (plan_info.h), so that
// the benchmark suite reports the path a row ran from the extension, not from a copy of the planner.
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/Exceptions.h>

#include <cstring>

#include "plan_info.h"

namespace rnnext {
namespace cuda {
namespace {

PyObject* py_cuda_path(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* dtype = nullptr;
  long long B = 0, H = 0;
  int backward = 0, device = 0;
  if (!PyArg_ParseTuple(args, "sLLp|i", &dtype, &B, &H, &backward, &device)) return nullptr;
  at::ScalarType st;
  if (std::strcmp(dtype, "float32") == 0) {
    st = at::kFloat;
  } else if (std::strcmp(dtype, "float64") == 0) {
    st = at::kDouble;
  } else if (std::strcmp(dtype, "float16") == 0) {
    st = at::kHalf;
  } else if (std::strcmp(dtype, "bfloat16") == 0) {
    st = at::kBFloat16;
  } else {
    TORCH_CHECK_VALUE(false, "rnnext: _cuda_path: unknown dtype '", dtype, "'");
  }
  TORCH_CHECK_VALUE(B >= 0 && H >= 0, "rnnext: _cuda_path: B and H must be >= 0, got ", B, ", ", H);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  return PyUnicode_FromString(planned_path(st, B, H, backward != 0));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_cuda_path", py_cuda_path, METH_VARARGS,
     "_cuda_path(dtype, B, H, backward, device=0) -> the recurrence path the CUDA planner picks "
     "(RNNEXT_CUDA_PATH included): persistent-regs|smem|cluster<C>, tiled[-cluster<C>] or fallback."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* plan_methods() { return methods; }

}  // namespace cuda
}  // namespace rnnext
