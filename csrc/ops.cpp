// The op boundary: schemas defined once; each device registers its own implementation
// (csrc/cpu/, csrc/cuda/). Fake kernels and autograd live in rnnext/_ops.py. See csrc/OPS.md.
#include <Python.h>
#include <torch/library.h>

#include "cpu/plan_py.h"
#include "fast_path.h"

// `import rnnext._C` loads this shared library, which runs the static registrations below.
// Every computation is a torch.ops.rnnext op; the module's functions are only the eager fast path
// of the modules' forward (fast_path.cpp), which calls those ops.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          rnnext::fast_path_methods()};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddFunctions(module, rnnext::cpu::plan_methods()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

TORCH_LIBRARY(rnnext, m) {
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor? hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor? grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor? hx, Tensor w_ih, Tensor w_hh, Tensor output, bool relu, bool reverse, "
      "bool[5] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_bias)");
}
