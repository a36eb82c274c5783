// rnn_forward and rnn_backward as compositions of at:: ops (see composite.h for when they run).
//
// Everything here is differentiable by ATen's own formulas, forward and reverse mode, to any order:
// the activation derivatives are at::tanh_backward / at::threshold_backward of the saved output, as
// in torch.nn's graph, so second derivatives flow into `output` (and from there, when `output` is
// the forward's saved result, back through the forward's node). Packed input follows csrc/OPS.md:
// step t covers rows [off_t, off_t + batch_sizes[t]) and entry b is row off_t + b.
#include "autograd_node.h"
#include "composite.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "op_handles.h"

#include <mutex>
#include <vector>

namespace rnnext::composite {
namespace {

using at::Tensor;
using std::optional;

// The time steps' batch sizes and first rows (padded input: every batch size is B).
struct Steps {
  int64_t T = 0, B = 0;
  bool packed = false;
  std::vector<int64_t> sizes, offsets;  // T entries each
};

Steps steps_of(const Tensor& input, const optional<Tensor>& batch_sizes) {
  Steps s;
  s.packed = batch_sizes.has_value() && batch_sizes->defined();
  if (!s.packed) {
    TORCH_CHECK(input.dim() == 3, "rnnext: input must be 3-D [time, batch, input], got ",
                input.dim(), "-D");
    s.T = input.size(0);
    s.B = input.size(1);
    s.sizes.assign(s.T, s.B);
    for (int64_t t = 0; t < s.T; ++t) s.offsets.push_back(t);  // index along dim 0
    return s;
  }
  const Tensor bs = batch_sizes->to(at::kCPU, at::kLong).contiguous();
  TORCH_CHECK(bs.dim() == 1, "rnnext: batch_sizes must be 1-D");
  s.T = bs.size(0);
  // Under torch.func the composite runs above functorch's unwrapping (at the autograd key), where
  // batch_sizes is a wrapper without storage: its values then come one by one through item().
  const int64_t* p = bs.has_storage() ? bs.const_data_ptr<int64_t>() : nullptr;
  int64_t off = 0;
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t n = p != nullptr ? p[t] : bs.select(0, t).item<int64_t>();
    s.sizes.push_back(n);
    s.offsets.push_back(off);
    off += n;
  }
  s.B = s.T > 0 ? s.sizes[0] : 0;
  return s;
}

// Rows of step t: input[t] when padded, input[off_t : off_t + n] when packed.
Tensor step(const Steps& s, const Tensor& x, int64_t t) {
  return s.packed ? x.narrow(0, s.offsets[t], s.sizes[t]) : x.select(0, t);
}

// The steps' rows put back together in time order (index t of `parts` is step t).
Tensor join(const Steps& s, const std::vector<Tensor>& parts) {
  return s.packed ? at::cat(parts, 0) : at::stack(parts, 0);
}

Tensor activate(const Tensor& pre, bool relu) { return relu ? at::relu(pre) : at::tanh(pre); }

// dL/dpre from dL/dh and h = act(pre).
Tensor activation_backward(const Tensor& dh, const Tensor& h, bool relu) {
  return relu ? at::threshold_backward(dh, h, 0) : at::tanh_backward(dh, h);
}

// The first `n` rows of `t`, or `t` itself when it has exactly n rows.
Tensor head(const Tensor& t, int64_t n) { return t.size(0) == n ? t : t.narrow(0, 0, n); }

// `top` over the rows of `rest` from top.size(0) on: an entry's state once it left the batch.
Tensor over(const Tensor& top, const Tensor& rest) {
  const int64_t n = top.size(0);
  return n == rest.size(0) ? top : at::cat({top, rest.narrow(0, n, rest.size(0) - n)}, 0);
}

Tensor zero_state(const Tensor& input, const Steps& s, const Tensor& w_hh) {  // hx None
  return at::zeros({s.B, w_hh.size(0)}, input.options());
}

}  // namespace

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const optional<Tensor>& batch_sizes,
                                       const optional<Tensor>& hx, const Tensor& w_ih,
                                       const Tensor& w_hh, const optional<Tensor>& b_ih,
                                       const optional<Tensor>& b_hh, bool relu, bool reverse) {
  const Steps s = steps_of(input, batch_sizes);
  const Tensor h0 = hx.has_value() && hx->defined() ? *hx : zero_state(input, s, w_hh);
  if (s.T == 0) {
    const int64_t H = w_hh.size(0);
    return {at::zeros(s.packed ? std::vector<int64_t>{0, H} : std::vector<int64_t>{0, s.B, H},
                      input.options()),
            h0.clone()};
  }
  // The input projection of every step at once, as ATen's CPU RNN does.
  const Tensor projected = at::linear(input, w_ih, b_ih);
  std::vector<Tensor> outs(s.T);
  Tensor h = h0;  // forward: every entry's latest state; reverse: the previous step's states
  for (int64_t i = 0; i < s.T; ++i) {
    const int64_t t = reverse ? s.T - 1 - i : i, n = s.sizes[t];
    // Forward: entry b continues from its state at t-1. Reverse: from its state at t+1, or from
    // hx when t is its own last step (b >= batch_sizes[t+1]).
    const Tensor prev = !reverse ? head(h, n) : i == 0 ? head(h0, n) : over(h, head(h0, n));
    const Tensor h_t = activate(step(s, projected, t) + at::linear(prev, w_hh, b_hh), relu);
    outs[t] = h_t;
    h = reverse ? h_t : over(h_t, h);
  }
  return {join(s, outs), h};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const Tensor& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const optional<Tensor>& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, bool relu, bool reverse,
    std::array<bool, 5> output_mask) {
  const Steps s = steps_of(input, batch_sizes);
  const int64_t H = w_hh.size(0), I = w_ih.size(1);
  const Tensor h0 = hx.has_value() && hx->defined() ? *hx : zero_state(input, s, w_hh);
  // carry: dL/dh of every entry's state, flowing back in time; it starts as grad_h_n and ends as
  // grad_hx. An entry's row is left as it is while the entry is outside the batch.
  Tensor carry = grad_h_n.has_value() && grad_h_n->defined() ? *grad_h_n : at::zeros_like(h0);
  std::vector<Tensor> dpres(s.T), prevs(s.T);
  for (int64_t i = 0; i < s.T; ++i) {  // the forward's steps, last first
    const int64_t t = reverse ? i : s.T - 1 - i, n = s.sizes[t];
    const Tensor dh = step(s, grad_output, t) + head(carry, n);
    const Tensor dpre = activation_backward(dh, step(s, output, t), relu);
    dpres[t] = dpre;
    carry = over(at::mm(dpre, w_hh), carry);
    // The state each row of step t started from (its h_prev), for grad_w_hh.
    if (!reverse) {
      prevs[t] = t == 0 ? head(h0, n) : head(step(s, output, t - 1), n);
    } else {
      prevs[t] = t == s.T - 1 ? head(h0, n) : over(step(s, output, t + 1), head(h0, n));
    }
  }
  const auto empty = [&] { return at::empty({0}, input.options()); };
  Tensor dpre, prev;
  if (s.T > 0) {
    dpre = join(s, dpres);
    prev = join(s, prevs);
  } else {
    dpre = at::zeros_like(output);
    prev = at::zeros_like(output);
  }
  const Tensor dpre2 = dpre.reshape({-1, H});
  return {
      output_mask[0] ? at::matmul(dpre, w_ih) : empty(),
      output_mask[1] ? carry : empty(),
      output_mask[2] ? at::mm(dpre2.t(), input.reshape({-1, I})) : empty(),
      output_mask[3] ? at::mm(dpre2.t(), prev.reshape({-1, H})) : empty(),
      output_mask[4] ? dpre2.sum(0) : empty(),
  };
}


namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The derivative of rnn_backward, taken only when a second backward reaches it: the composite
// rnn_backward is recomputed from the saved arguments and differentiated by ATen (a vector-Jacobian
// product through torch::autograd::grad). So the gradients themselves, create_graph or not, always
// come from the fused kernel, and only an actual second backward pays for the composite (its
// forward and its backward). With create_graph in that second backward too, the recomputation runs
// on the saved tensors themselves (their history intact), so third and higher derivatives follow.
struct RnnBackwardBackward : public Node {
  // Next edges: those of (grad_output, grad_h_n, input, hx, w_ih, w_hh, output), in that order.
  static constexpr size_t kArgs = 7;
  SavedVariable args_[kArgs];
  SavedVariable batch_sizes_;
  bool relu_ = false, reverse_ = false;
  std::array<bool, 5> mask_{};

  std::string name() const override { return "RnnBackwardBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& v : args_) v.reset_data();
    batch_sizes_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool create_graph = at::GradMode::is_enabled();
    at::AutoGradMode grad_mode(true);
    std::vector<Tensor> args(kArgs);
    std::vector<Tensor> wrt;      // the arguments whose gradient is asked for
    std::vector<size_t> wrt_slot;
    for (size_t i = 0; i < kArgs; ++i) {
      args[i] = args_[i].unpack();
      if (args[i].defined() && task_should_compute_output(i)) {
        // torch::autograd::grad gives total derivatives: were the saved tensors themselves the
        // inputs, a path from one to another (grad_h_n = f(h_n), say) would be counted here and
        // again by the engine after this node. So each is replaced by a fresh root: a leaf
        // without create_graph; with it, an alias (view_as) whose node leads back to the tensor,
        // so the result stays differentiable with respect to it.
        args[i] = create_graph ? args[i].view_as(args[i]) : args[i].detach().requires_grad_(true);
        wrt.push_back(args[i]);
        wrt_slot.push_back(i);
      }
    }
    variable_list result(kArgs);
    std::vector<Tensor> outs, outs_grads;
    // Only the outputs a gradient arrives at are recomputed (their GEMMs skipped otherwise).
    std::array<bool, 5> flowing{};
    for (size_t k = 0; k < 5; ++k) flowing[k] = mask_[k] && grads[k].defined();
    if (!wrt.empty()) {
      auto recomputed = rnn_backward(args[0], maybe(args[1]), args[2], maybe(batch_sizes_.unpack()),
                                     maybe(args[3]), args[4], args[5], args[6], relu_, reverse_,
                                     flowing);
      const Tensor parts[5] = {std::get<0>(recomputed), std::get<1>(recomputed),
                               std::get<2>(recomputed), std::get<3>(recomputed),
                               std::get<4>(recomputed)};
      for (size_t k = 0; k < 5; ++k) {
        if (flowing[k] && parts[k].requires_grad()) {
          outs.push_back(parts[k]);
          outs_grads.push_back(grads[k]);
        }
      }
    }
    if (outs.empty()) return result;  // nothing flows back: every gradient is zero
    auto got = torch::autograd::grad(outs, wrt, outs_grads, /*retain_graph=*/create_graph,
                                     create_graph, /*allow_unused=*/true);
    for (size_t j = 0; j < wrt.size(); ++j) result[wrt_slot[j]] = got[j];
    return result;
  }

 private:
  static optional<Tensor> maybe(const Tensor& t) {
    return t.defined() ? optional<Tensor>(t) : std::nullopt;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward_autograd(
    c10::DispatchKeySet ks, const Tensor& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const optional<Tensor>& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, bool relu, bool reverse,
    std::array<bool, 5> output_mask) {
  if (has_tangent(grad_output) || has_tangent(grad_h_n) || has_tangent(input) || has_tangent(hx) ||
      has_tangent(w_ih) || has_tangent(w_hh) || has_tangent(output)) {
    // Forward-mode AD (a Hessian-vector product as jvp of grad): ATen's formulas on the composite.
    return rnn_backward(grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, output, relu,
                        reverse, output_mask);
  }
  NodeRef<RnnBackwardBackward> node;
  if (torch::autograd::compute_requires_grad(grad_output, grad_h_n, input, hx, w_ih, w_hh, output)) {
    node = make_node<RnnBackwardBackward>();
    node->set_next_edges(
        torch::autograd::collect_next_edges(grad_output, grad_h_n, input, hx, w_ih, w_hh, output));
  }
  auto res = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return backward_op().redispatch(ks & c10::after_autograd_keyset, grad_output, grad_h_n, input,
                                    batch_sizes, hx, w_ih, w_hh, output, relu, reverse,
                                    output_mask);
  }();
  if (node) {
    const Tensor* args[] = {&grad_output, grad_h_n ? &*grad_h_n : nullptr, &input,
                            hx ? &*hx : nullptr, &w_ih, &w_hh, &output};
    for (size_t i = 0; i < RnnBackwardBackward::kArgs; ++i) {
      if (args[i] != nullptr) node->args_[i] = SavedVariable(*args[i], false);
    }
    node->batch_sizes_ = SavedVariable(batch_sizes.value_or(Tensor()), false);
    node->relu_ = relu;
    node->reverse_ = reverse;
    node->mask_ = output_mask;
    std::apply([&](auto&... g) { (torch::autograd::set_history(g, node), ...); }, res);
  }
  return res;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, Autograd, m) { m.impl("rnn_backward", &rnn_backward_autograd); }

}  // namespace rnnext::composite

