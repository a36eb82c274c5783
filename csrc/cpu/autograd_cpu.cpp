// Autograd for rnnext::rnn_forward on CPU tensors, in C++ (dispatch key AutogradCPU).
//
// Why: the Python autograd kernel that torch.library.register_autograd installs (rnnext/_ops.py)
// runs Python on every call, grad or no grad: tens of microseconds, more than the whole forward
// at the tutorial shape. A kernel on the runtime key AutogradCPU takes precedence over that
// registration on the Autograd alias key for CPU tensors; other devices keep the Python one.
// The formula is the same as _ops.py's: save (input, batch_sizes, hx, w_ih, w_hh, output), call the
// fused rnnext::rnn_backward with output_mask = [input, hx, w_ih, w_hh, b_ih or b_hh].
#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../op_handles.h"

#include <cstring>

namespace rnnext {
namespace {

using at::Tensor;
using c10::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A plain dense CPU tensor with no tensor subclass (fake, functional) and no Python dispatch mode
// (tracing, FakeTensorMode) watching: only then may a tensor be made without the dispatcher. Else
// tracing would see a real tensor appear from nowhere (AOT autograd rejects it) or record a
// constant in place of the op.
bool plain_cpu(const Tensor& t) {
  static const c10::DispatchKeySet plain({c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                          c10::DispatchKey::AutogradCPU,
                                          c10::DispatchKey::AutocastCPU});
  return (t.key_set() - plain).empty() && !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

bool present(const optional<Tensor>& t) { return t.has_value() && t->defined(); }
optional<Tensor> maybe(const Tensor& t) { return t.defined() ? optional<Tensor>(t) : c10::nullopt; }

// The differentiable arguments' slots in the saved code (see RnnForward::forward).
enum Slot : int { kInput = 0, kHx, kWih, kWhh, kBih, kBhh };

struct RnnForward : public torch::autograd::Function<RnnForward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const optional<Tensor>& batch_sizes, const optional<Tensor>& hx,
                               const Tensor& w_ih, const Tensor& w_hh,
                               const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                               bool relu, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, h_n] = forward_op().call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, batch_sizes.value_or(Tensor()), hx.value_or(Tensor()), w_ih,
                            w_hh, out});
    // needs_input_grad counts only the tensor arguments that were given (absent optionals are
    // not inputs of the graph node): each argument's edge index (4 bits, 15 when absent), and
    // relu and reverse, in one saved integer (one hash-map entry rather than nine).
    int64_t code = 0, edge = 0;
    auto put = [&](int slot, bool is_var) {
      code |= (is_var ? edge++ : int64_t{15}) << (4 * slot);
    };
    put(kInput, true);
    edge += present(batch_sizes) ? 1 : 0;
    put(kHx, present(hx));
    put(kWih, true);
    put(kWhh, true);
    put(kBih, present(b_ih));
    put(kBhh, present(b_hh));
    code |= (int64_t{relu} << 24) | (int64_t{reverse} << 25);
    ctx->saved_data["k"] = code;
    return {out, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &w_ih = saved[3], &w_hh = saved[4], &output = saved[5];
    const int64_t code = ctx->saved_data["k"].toInt();
    auto need = [&](int slot) {
      const int64_t e = (code >> (4 * slot)) & 15;
      return e != 15 && ctx->needs_input_grad(static_cast<size_t>(e));
    };
    const bool need_b_ih = need(kBih), need_b_hh = need(kBhh);
    const std::array<bool, 5> mask = {need(kInput), need(kHx), need(kWih), need(kWhh),
                                      need_b_ih || need_b_hh};
    // An unused output (RNNCell returns only h_n): zeros, without the dispatcher when nothing
    // is tracing.
    Tensor grad_output = grads[0];
    if (!grad_output.defined() && !plain_cpu(output)) {
      grad_output = at::zeros_like(output);
    } else if (!grad_output.defined()) {
      grad_output = Tensor(at::detail::empty_cpu(output.sizes(), output.scalar_type()));
      std::memset(grad_output.data_ptr(), 0, grad_output.nbytes());
    }
    const bool relu = (code >> 24) & 1, reverse = (code >> 25) & 1;
    auto call = [&] {
      return backward_op().call(grad_output, maybe(grads[1]), input, maybe(saved[1]),
                                maybe(saved[2]), w_ih, w_hh, output, relu, reverse, mask);
    };
    // Without create_graph the engine runs this with grad mode off, and rnn_backward's autograd
    // kernel (the Python one in _ops.py, which only raises on a second backward) would record
    // nothing: skip it and go straight to the CPU kernel, saving its Python call (~30 us).
    // With create_graph, through the dispatcher as before, so a second backward still raises.
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> res;
    if (at::GradMode::is_enabled()) {
      res = call();
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      res = call();
    }
    auto& [g_input, g_hx, g_w_ih, g_w_hh, g_bias] = res;
    return {mask[0] ? g_input : Tensor(), Tensor(), mask[1] ? g_hx : Tensor(),
            mask[2] ? g_w_ih : Tensor(), mask[3] ? g_w_hh : Tensor(),
            need_b_ih ? g_bias : Tensor(), need_b_hh ? g_bias : Tensor(), Tensor(), Tensor()};
  }
};

bool requires_grad(const optional<Tensor>& t) { return present(t) && t->requires_grad(); }

std::tuple<Tensor, Tensor> rnn_forward_autograd(const Tensor& input,
                                                const optional<Tensor>& batch_sizes,
                                                const optional<Tensor>& hx, const Tensor& w_ih,
                                                const Tensor& w_hh, const optional<Tensor>& b_ih,
                                                const optional<Tensor>& b_hh, bool relu,
                                                bool reverse) {
  const bool record = at::GradMode::is_enabled() &&
                      (input.requires_grad() || requires_grad(hx) || w_ih.requires_grad() ||
                       w_hh.requires_grad() || requires_grad(b_ih) || requires_grad(b_hh));
  if (!record) {  // nothing to differentiate: straight to the kernel, no graph node
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  }
  auto outs = RnnForward::apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, AutogradCPU, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);
}

}  // namespace rnnext
