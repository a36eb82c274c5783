// Typed dispatcher handles of the two ops, looked up once: C++ callers (the CPU autograd kernel,
// the Python fast path) call them through the dispatcher as Python's torch.ops would.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <tuple>

namespace rnnext {

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, bool, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, bool, bool, std::array<bool, 5>);

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
