// Eager fast path of rnnext.RNN / rnnext.RNNCell forward: the same op calls as rnnext/functional.py
// (the same ATen ops around them, in the same order, through the dispatcher with autograd), made
// from C++ so that a small call does not pay for Python argument parsing of every op (~2 us each)
// and the Python checks that can only pass.
//
// Each entry returns None, computing nothing, unless the call is an ordinary one: exact Tensor or
// Parameter arguments (no subclass), no torch-function mode, no autocast, float32 / float64 on
// the CPU with one dtype throughout, every shape consistent. Otherwise Python takes its general
// path, which raises what torch.nn raises or handles the case (half types, autocast, packed
// sequences, dropout, CUDA). The modules never call this under torch.compile.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include "fast_path.h"
#include "op_handles.h"

#include <optional>
#include <vector>

namespace rnnext {
namespace {

using at::Tensor;

// Ordinary tensor arguments only: no subclass, no torch-function mode, no autocast, no torch.func
// transform (those take Python, which gives functorch a Python autograd.Function: _ops.py).
bool plain_call() {
  if (at::impl::torch_function_mode_enabled()) return false;
  // A torch.func transform includes functorch's front-mode key while it is active.
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) {
    return false;
  }
  // Autocast is on for a device type when its key is not excluded (every one is, by default).
  const auto excluded = c10::impl::tls_local_dispatch_key_set().excluded_;
  return (c10::autocast_dispatch_keyset - excluded).empty();
}

// obj as an exact Tensor / Parameter, or nullptr.
const Tensor* tensor_arg(PyObject* obj) {
  return THPVariable_CheckExact(obj) ? &THPVariable_Unpack(obj) : nullptr;
}

bool same_kind(const Tensor& t, const Tensor& like) {
  return t.scalar_type() == like.scalar_type() && t.device() == like.device();
}

// float32 / float64 CPU tensors. (CUDA tensors take the Python path, as validated on the GPU
// machine: this path has not run on a GPU yet.)
bool supported_dtype(const Tensor& t) {
  return (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) && t.is_cpu();
}

// rnnext._C._cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, relu) -> h' or None
PyObject* cell_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7 || !plain_call()) Py_RETURN_NONE;
  const Tensor* input = tensor_arg(args[0]);
  const Tensor* w_ih = tensor_arg(args[2]);
  const Tensor* w_hh = tensor_arg(args[3]);
  if (input == nullptr || w_ih == nullptr || w_hh == nullptr) Py_RETURN_NONE;
  std::optional<Tensor> hx, b_ih, b_hh;
  for (auto [obj, dst] : {std::pair{args[1], &hx}, {args[4], &b_ih}, {args[5], &b_hh}}) {
    if (obj == Py_None) continue;
    const Tensor* t = tensor_arg(obj);
    if (t == nullptr || !same_kind(*t, *input)) Py_RETURN_NONE;
    *dst = *t;
  }
  // Batched [B, I] with hx [B, H], or unbatched [I] with hx [H] (torch.nn's 1-D input with a 2-D
  // hx quirk takes Python).
  const bool batched = input->dim() == 2;
  if ((input->dim() != 1 && !batched) || !supported_dtype(*input) || !same_kind(*w_ih, *input) ||
      !same_kind(*w_hh, *input) || w_ih->dim() != 2 || w_hh->dim() != 2 ||
      input->size(-1) != w_ih->size(1)) {
    Py_RETURN_NONE;
  }
  if (hx && (hx->dim() != input->dim() || (batched && hx->size(0) != input->size(0)) ||
             hx->size(-1) != w_hh->size(1))) {
    Py_RETURN_NONE;
  }
  const int relu = PyObject_IsTrue(args[6]);
  if (relu < 0) return nullptr;
  // Own references (not the Python objects' tensors) while the GIL is released.
  const Tensor x = *input, wi = *w_ih, wh = *w_hh;
  Tensor h;
  {
    pybind11::gil_scoped_release no_gil;
    // As RNNCell.forward and functional.rnn_cell: unbatched gets a batch of 1, then one step.
    const Tensor x2 = batched ? x : x.unsqueeze(0);
    if (hx && !batched) hx = hx->unsqueeze(0);
    h = std::get<1>(forward_op().call(x2.unsqueeze(0), std::nullopt, hx, wi, wh, b_ih, b_hh,
                                      relu != 0, false));
    if (!batched) h = h.squeeze(0);
  }
  return THPVariable_Wrap(std::move(h));
  END_HANDLE_TH_ERRORS
}

// rnnext._C._rnn_forward(input, hx, flat_weights, parameters, flat_weight_names, input_size,
//                        hidden_size, num_layers, bidirectional, bias, batch_first, relu)
//   -> (output, h_n) or None
// A padded input, batched or not; no dropout between layers (the caller checks). flat_weights[i] must
// be parameters[flat_weight_names[i]] itself (the module's _parameters dict), as RNN.forward's
// Python path checks before it trusts _flat_weights.
PyObject* rnn_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 12 || !plain_call()) Py_RETURN_NONE;
  const Tensor* input = tensor_arg(args[0]);
  if (input == nullptr || (input->dim() != 3 && input->dim() != 2) || !supported_dtype(*input)) {
    Py_RETURN_NONE;
  }
  const bool batched = input->dim() == 3;  // unbatched: [T, I] with hx [layers * dirs, H]
  const int64_t input_size = PyLong_AsLongLong(args[5]), H = PyLong_AsLongLong(args[6]);
  const int64_t layers = PyLong_AsLongLong(args[7]);
  if (PyErr_Occurred()) return nullptr;
  if (layers < 1 || H < 1 || input_size < 0) Py_RETURN_NONE;
  // Truth values, as Python's `if` reads them (torch.nn keeps batch_first=1 as the int 1).
  int flags[4];
  for (int i = 0; i < 4; ++i) {
    flags[i] = PyObject_IsTrue(args[8 + i]);
    if (flags[i] < 0) return nullptr;
  }
  const int64_t dirs = flags[0] ? 2 : 1;
  const bool bias = flags[1], batch_first = flags[2], relu = flags[3];
  const int64_t per = bias ? 4 : 2;
  PyObject *wlist = args[2], *params = args[3], *names = args[4];
  if (!PyList_CheckExact(wlist) || PyList_GET_SIZE(wlist) != layers * dirs * per ||
      !PyDict_CheckExact(params) || !PyList_CheckExact(names) ||
      PyList_GET_SIZE(names) != PyList_GET_SIZE(wlist)) {
    Py_RETURN_NONE;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(wlist); ++i) {
    PyObject* registered = PyDict_GetItemWithError(params, PyList_GET_ITEM(names, i));
    if (registered == nullptr && PyErr_Occurred()) return nullptr;
    if (registered != PyList_GET_ITEM(wlist, i)) Py_RETURN_NONE;
  }
  // As RNN.forward: an unbatched input gets a batch of 1 (at batch_first's batch dimension).
  const int64_t batch_dim = batch_first ? 0 : 1;
  const int64_t T = batched ? input->size(1 - batch_dim) : input->size(0);
  const int64_t B = batched ? input->size(batch_dim) : 1;
  if (T == 0 || B == 0 || input->size(-1) != input_size) Py_RETURN_NONE;
  std::optional<Tensor> hx;
  if (args[1] != Py_None) {
    const Tensor* t = tensor_arg(args[1]);
    if (t == nullptr || !same_kind(*t, *input) || t->dim() != (batched ? 3 : 2) ||
        t->size(0) != layers * dirs || (batched && t->size(1) != B) || t->size(-1) != H) {
      Py_RETURN_NONE;
    }
    hx = *t;
  }
  const Tensor in = *input;  // own references while the GIL is released (w and hx are copies too)
  std::vector<Tensor> w;
  w.reserve(PyList_GET_SIZE(wlist));
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(wlist); ++i) {
    const Tensor* t = tensor_arg(PyList_GET_ITEM(wlist, i));
    if (t == nullptr || !same_kind(*t, *input)) Py_RETURN_NONE;
    // Shapes as torch.nn.RNN makes them: [H, in] (in = input_size, then dirs * H), [H, H], [H].
    const int64_t k = i / per, role = i % per;
    const int64_t in = k < dirs ? input_size : dirs * H;
    const bool ok = role == 0 ? t->dim() == 2 && t->size(0) == H && t->size(1) == in
                    : role == 1 ? t->dim() == 2 && t->size(0) == H && t->size(1) == H
                                : t->dim() == 1 && t->size(0) == H;
    if (!ok) Py_RETURN_NONE;
    w.push_back(*t);
  }
  Tensor output, h_n;
  {
    pybind11::gil_scoped_release no_gil;
    const auto& op = forward_op();
    if (!batched && hx) hx = hx->unsqueeze(1);
    Tensor x = batched ? in : in.unsqueeze(batch_dim);
    if (batch_first) x = x.transpose(0, 1);
    std::vector<Tensor> finals, h0s;
    finals.reserve(layers * dirs);
    if (hx) {  // as functional._layers: views of hx under one backward node
      h0s = layers * dirs == 1 ? std::vector<Tensor>{hx->squeeze(0)} : hx->unbind(0);
    }
    for (int64_t layer = 0; layer < layers; ++layer) {
      Tensor outs[2];
      for (int64_t d = 0; d < dirs; ++d) {
        const int64_t k = layer * dirs + d;
        const Tensor* p = w.data() + k * per;
        auto [out, h] = op.call(x, std::nullopt, hx ? std::optional<Tensor>(h0s[k]) : std::nullopt,
                                p[0], p[1], bias ? std::optional<Tensor>(p[2]) : std::nullopt,
                                bias ? std::optional<Tensor>(p[3]) : std::nullopt, relu, d == 1);
        outs[d] = std::move(out);
        finals.push_back(std::move(h));
      }
      x = dirs == 1 ? outs[0] : at::cat({outs[0], outs[1]}, -1);
    }
    output = batch_first ? x.transpose(0, 1) : x;
    h_n = finals.size() == 1 ? finals[0].unsqueeze(0) : at::stack(finals, 0);
    if (!batched) {
      output = output.squeeze(batch_dim);
      h_n = h_n.squeeze(1);
    }
  }
  PyObject* py_out = THPVariable_Wrap(std::move(output));
  if (py_out == nullptr) return nullptr;
  PyObject* py_h = THPVariable_Wrap(std::move(h_n));
  if (py_h == nullptr) {
    Py_DECREF(py_out);
    return nullptr;
  }
  PyObject* result = PyTuple_Pack(2, py_out, py_h);
  Py_DECREF(py_out);
  Py_DECREF(py_h);
  return result;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_cell_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(cell_forward)),
     METH_FASTCALL, "RNNCell forward fast path (see csrc/fast_path.cpp); None when not taken."},
    {"_rnn_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_forward)),
     METH_FASTCALL, "RNN forward fast path (see csrc/fast_path.cpp); None when not taken."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* fast_path_methods() { return methods; }

}  // namespace rnnext
