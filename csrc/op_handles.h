// Typed dispatcher handles of the ops, looked up once: C++ callers (the stack in stack.cpp, the
// autograd nodes in autograd.cpp, the Python bindings in bindings.cpp) call them through the
// dispatcher.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <tuple>

namespace rnnext {

using RnnSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    at::TensorList, bool, int64_t, double, bool, bool, bool, bool);
using CellSig = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                           const at::Tensor&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, bool);
using ForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, bool, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, bool, bool, std::array<bool, 5>);

inline const c10::TypedOperatorHandle<RnnSig>& rnn_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("rnnext::rnn", "").typed<RnnSig>();
  return op;
}

inline const c10::TypedOperatorHandle<CellSig>& cell_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("rnnext::rnn_cell", "").typed<CellSig>();
  return op;
}

inline const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnext::rnn_forward", "")
                             .typed<ForwardSig>();
  return op;
}

inline const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnext::rnn_backward", "")
                             .typed<BackwardSig>();
  return op;
}

}  // namespace rnnext
