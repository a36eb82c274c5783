// rnnext._C.rnn / rnn_cell: Python entry points of two ops for the modules' eager calls (and
// registered: RNN.forward's check that its flat weights are the registered parameters).
//
// Each takes its op's arguments in schema order (csrc/ops.cpp) and makes the same dispatcher call
// as torch.ops.rnnext.<op>.default, unboxed: no computation and no checks of its own. Why:
// torch.ops converts every argument through the schema into a boxed stack and back (~2-3 us a
// call here), more than the tutorial-shape forward's arithmetic.
//
// Each returns None, calling nothing, where a Python-level policy applies: a tensor subclass or a
// torch-function mode (which must see the op through torch.ops), autocast (whose casts
// rnnext/functional.py makes), or arguments of other types. The modules then take their general
// path, which calls the same op through torch.ops.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include "bindings.h"
#include "op_handles.h"

#include <c10/util/SmallVector.h>

#include <optional>

namespace rnnext {
namespace {

using at::Tensor;
using std::optional;

// Argument conversion that gives up (false) on anything but the plain types.
bool as_tensor(PyObject* obj, Tensor& out) {
  if (!THPVariable_CheckExact(obj)) return false;  // Tensor or Parameter, no subclass
  out = THPVariable_Unpack(obj);
  return true;
}
bool as_optional(PyObject* obj, optional<Tensor>& out) {
  if (obj == Py_None) return true;
  Tensor t;
  if (!as_tensor(obj, t)) return false;
  out = std::move(t);
  return true;
}
// bool and int arguments: Python ints (bool is one), read as torch.ops reads them.
bool as_int(PyObject* obj, int64_t& out) {
  if (!PyLong_Check(obj)) return false;
  out = PyLong_AsLongLong(obj);
  if (out == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}
bool as_bool(PyObject* obj, bool& out) {
  int64_t v;
  if (!as_int(obj, v)) return false;
  out = v != 0;
  return true;
}
bool as_float(PyObject* obj, double& out) {
  if (!PyFloat_Check(obj) && !PyLong_Check(obj)) return false;
  out = PyFloat_AsDouble(obj);
  if (out == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

// No torch-function mode and no autocast (autocast is on for a device type when its key is not
// excluded from the thread's dispatch keys; every one is, by default).
bool plain_call() {
  if (at::impl::torch_function_mode_enabled()) return false;
  const auto excluded = c10::impl::tls_local_dispatch_key_set().excluded_;
  return (c10::autocast_dispatch_keyset - excluded).empty();
}

PyObject* wrap_pair(std::tuple<Tensor, Tensor>&& outs) {
  PyObject* a = THPVariable_Wrap(std::move(std::get<0>(outs)));
  if (a == nullptr) return nullptr;
  PyObject* b = THPVariable_Wrap(std::move(std::get<1>(outs)));
  if (b == nullptr) {
    Py_DECREF(a);
    return nullptr;
  }
  PyObject* pair = PyTuple_Pack(2, a, b);
  Py_DECREF(a);
  Py_DECREF(b);
  return pair;
}

// rnn(input, batch_sizes, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
//     batch_first, relu) -> (output, h_n)
PyObject* rnn(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  Tensor input;
  optional<Tensor> batch_sizes, hx;
  c10::SmallVector<Tensor, 16> weights;
  bool has_biases, train, bidirectional, batch_first, relu;
  int64_t num_layers;
  double dropout;
  bool plain = nargs == 11 && plain_call() &&
               as_tensor(args[0], input) && as_optional(args[1], batch_sizes) &&
               as_optional(args[2], hx) &&
               (PyList_CheckExact(args[3]) || PyTuple_CheckExact(args[3])) &&
               as_bool(args[4], has_biases) && as_int(args[5], num_layers) &&
               as_float(args[6], dropout) && as_bool(args[7], train) &&
               as_bool(args[8], bidirectional) && as_bool(args[9], batch_first) &&
               as_bool(args[10], relu);
  if (plain) {
    PyObject* seq = args[3];
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    weights.resize(n);
    for (Py_ssize_t i = 0; i < n && plain; ++i) {
      plain = as_tensor(PySequence_Fast_GET_ITEM(seq, i), weights[i]);
    }
  }
  if (!plain) Py_RETURN_NONE;
  std::tuple<Tensor, Tensor> outs;
  {
    pybind11::gil_scoped_release no_gil;
    outs = rnn_op().call(input, batch_sizes, hx, at::TensorList(weights), has_biases, num_layers,
                         dropout, train, bidirectional, batch_first, relu);
  }
  return wrap_pair(std::move(outs));
  END_HANDLE_TH_ERRORS
}

// rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu) -> h'
PyObject* rnn_cell(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  Tensor input, w_ih, w_hh;
  optional<Tensor> hx, b_ih, b_hh;
  bool relu;
  const bool plain = nargs == 7 && plain_call() &&
                     as_tensor(args[0], input) && as_optional(args[1], hx) &&
                     as_tensor(args[2], w_ih) && as_tensor(args[3], w_hh) &&
                     as_optional(args[4], b_ih) && as_optional(args[5], b_hh) &&
                     as_bool(args[6], relu);
  if (!plain) Py_RETURN_NONE;
  Tensor h;
  {
    pybind11::gil_scoped_release no_gil;
    h = cell_op().call(input, hx, w_ih, w_hh, b_ih, b_hh, relu);
  }
  return THPVariable_Wrap(std::move(h));
  END_HANDLE_TH_ERRORS
}

// registered(weights, parameters, names) -> bool: whether weights[i] is parameters[names[i]] for
// every i (RNN.forward's check that _flat_weights is current; a Python loop costs ~0.3 us a call).
PyObject* registered(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyDict_Check(args[1]) ||
      !PyList_CheckExact(args[2]) || PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[2])) {
    PyErr_SetString(PyExc_TypeError, "registered(list, dict, list of the same length)");
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); ++i) {
    PyObject* p = PyDict_GetItemWithError(args[1], PyList_GET_ITEM(args[2], i));
    if (p == nullptr && PyErr_Occurred()) return nullptr;
    if (p != PyList_GET_ITEM(args[0], i)) Py_RETURN_FALSE;
  }
  Py_RETURN_TRUE;
}

PyMethodDef methods[] = {
    {"rnn", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn)), METH_FASTCALL,
     "torch.ops.rnnext.rnn.default called unboxed, or None (csrc/bindings.cpp)."},
    {"rnn_cell", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_cell)),
     METH_FASTCALL,
     "torch.ops.rnnext.rnn_cell.default called unboxed, or None (csrc/bindings.cpp)."},
    {"registered", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(registered)),
     METH_FASTCALL, "Whether weights[i] is parameters[names[i]] for every i (csrc/bindings.cpp)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* binding_methods() { return methods; }

}  // namespace rnnext
