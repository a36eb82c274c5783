// The tail of rnn_backward shared by every device's glue: once the recurrence has produced dpre
// (dL/d pre-activation of every row), the weight and bias gradients, and grad_input unless the
// recurrence already made it, are a few large ATen GEMMs and a sum over all N rows.
#pragma once

#include <ATen/Functions.h>

#include <array>
#include <tuple>

#include "rnn_common.h"

namespace rnnext {

// grad_input: already computed, or undefined (then dpre W_ih here when wanted). gather_prev(h_prev)
// fills h_prev [N, H] with the state each row started from; it is called only when W_hh's
// gradient is wanted and there is at least one row and one hidden feature. Unwanted gradients
// are empty [0] tensors, as rnn_backward's schema documents (csrc/OPS.md).
template <typename GatherPrev>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_tail(
    const Geometry& g, const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& dpre,
    at::Tensor grad_input, at::Tensor grad_hx, std::array<bool, 5> output_mask,
    const GatherPrev& gather_prev) {
  // output_mask[1] (grad_hx) is the caller's: grad_hx comes from the recurrence.
  const bool want_input = output_mask[0], want_w_ih = output_mask[2];
  const bool want_w_hh = output_mask[3], want_bias = output_mask[4];
  const auto opts = input.options();
  if (!grad_input.defined()) {
    grad_input = want_input ? at::mm(dpre, w_ih).view(input.sizes()) : at::empty({0}, opts);
  }
  at::Tensor grad_w_ih =
      want_w_ih ? at::mm(dpre.t(), input.reshape({g.N, g.I})) : at::empty({0}, opts);
  at::Tensor grad_w_hh = at::empty({0}, opts);
  if (want_w_hh) {
    at::Tensor h_prev = at::empty({g.N, g.H}, opts);
    if (g.N > 0 && g.H > 0) gather_prev(h_prev);
    grad_w_hh = at::mm(dpre.t(), h_prev);
  }
  at::Tensor grad_bias = want_bias ? dpre.sum(0) : at::empty({0}, opts);
  return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace rnnext
