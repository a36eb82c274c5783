// The differentiable composites of the per-layer ops: rnn_forward and rnn_backward written again
// with at:: ops (csrc/composite.cpp), for every device. They are a second formula of the math in
// csrc/OPS.md, run only where the fused kernels have no derivative:
//   - forward-mode AD: rnn_forward's autograd kernel (csrc/autograd.cpp) and rnn_backward's run
//     the composite when a tangent is attached to an argument (ATen's forward-AD formulas give the
//     tangents, its backward formulas the gradients);
//   - higher order: rnn_backward's autograd kernel (csrc/composite.cpp) runs the fused kernel and,
//     when an argument requires grad, records a node that recomputes composite::rnn_backward and
//     differentiates it only when a second backward reaches it.
// tests/test_higher_order.py checks them against the fused ops (float64, tight).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace rnnext::composite {

std::tuple<at::Tensor, at::Tensor> rnn_forward(const at::Tensor& input,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               const std::optional<at::Tensor>& hx,
                                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& b_ih,
                                               const std::optional<at::Tensor>& b_hh, bool relu,
                                               bool reverse);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, bool relu, bool reverse, std::array<bool, 5> output_mask);

// Whether a tensor carries a forward-mode tangent (torch.autograd.forward_ad, torch.func.jvp).
inline bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(0).defined(); }
inline bool has_tangent(const std::optional<at::Tensor>& t) { return t && has_tangent(*t); }

}  // namespace rnnext::composite
