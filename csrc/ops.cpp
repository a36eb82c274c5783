// The op boundary: schemas defined once; each device registers its own implementation of the
// per-layer ops (csrc/cpu/, csrc/cuda/), the stack is one composite over them (csrc/stack.cpp), and
// autograd is one C++ node for every device (csrc/autograd.cpp). Fake kernels live in
// rnnext/_ops.py. See csrc/OPS.md.
#include <Python.h>
#include <torch/library.h>

#include "bindings.h"
#include "cpu/peak.h"
#include "cpu/plan_py.h"
#ifdef RNNEXT_WITH_CUDA
#include "cuda/plan_info.h"
#endif

// `import rnnext._C` loads this shared library, which runs the static registrations below. Every
// computation is a torch.ops.rnnext op; the module's functions only call them (bindings.cpp).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          rnnext::binding_methods()};
  PyObject* m = PyModule_Create(&module_def);
  // The benchmark suite's probes: FMA peak, CPU ISA (cpu/peak.cpp).
  if (m != nullptr && PyModule_AddFunctions(m, rnnext::cpu::peak_methods()) != 0) Py_CLEAR(m);
#ifdef RNNEXT_WITH_CUDA
  // The CUDA planner's choice, for the benchmark suite (cuda/plan_py.cpp).
  if (m != nullptr && PyModule_AddFunctions(m, rnnext::cuda::plan_methods()) != 0) Py_CLEAR(m);
#endif
  // The CPU planner's choice (cpu/plan_py.cpp).
  if (m != nullptr && PyModule_AddFunctions(m, rnnext::cpu::plan_methods()) != 0) Py_CLEAR(m);
  return m;
}

TORCH_LIBRARY(rnnext, m) {
  m.def(
      "rnn(Tensor input, Tensor? batch_sizes, Tensor? hx, Tensor[] weights, bool has_biases, "
      "int num_layers, float dropout, bool train, bool bidirectional, bool batch_first, "
      "bool relu) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_cell(Tensor input, Tensor? hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool relu) -> Tensor");
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor? hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor? grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor? hx, Tensor w_ih, Tensor w_hh, Tensor output, bool relu, bool reverse, "
      "bool[5] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_bias)");
}
