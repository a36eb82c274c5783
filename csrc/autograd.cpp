// Autograd of the per-layer op, in C++, for every device (the Autograd alias key): the one backward
// formula of rnnext. rnnext::rnn (the stack, csrc/stack.cpp) is differentiated through it.
//
// rnn_forward's node saves (input, batch_sizes, hx, w_ih, w_hh, output) and its backward is one
// call of the fused rnnext::rnn_backward with output_mask = [input, hx, w_ih, w_hh, b_ih or b_hh]
// (csrc/OPS.md, "Backward"). rnn_backward's own autograd (its derivative, for double backward) and
// the forward-mode path (a tangent on an argument runs the at:: composite) are in csrc/composite.cpp.
//
// The nodes are plain torch::autograd::Node subclasses, as PyTorch's generated ones are, not
// torch::autograd::Function: functorch refuses C++ autograd Functions under its transforms, while a
// plain node works with torch.func.grad / vjp / vmap like any ATen op's. So every road (eager,
// torch.compile, export, torch.func) on every device runs this formula.
#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "autograd_node.h"
#include "composite.h"
#include "op_handles.h"

#include <cstring>
#include <mutex>

namespace rnnext {
namespace {

using at::Tensor;
using std::optional;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// A plain dense CPU tensor with no tensor subclass (fake, functional, functorch wrapper) and no
// Python dispatch mode (tracing, FakeTensorMode) watching: only then may a tensor be made without
// the dispatcher. Else tracing would see a real tensor appear from nowhere (AOT autograd rejects
// it) or record a constant in place of the op.
bool plain_cpu(const Tensor& t) {
  static const c10::DispatchKeySet plain({c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                          c10::DispatchKey::AutogradCPU,
                                          c10::DispatchKey::AutocastCPU});
  return (t.key_set() - plain).empty() && !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

optional<Tensor> maybe(const Tensor& t) { return t.defined() ? optional<Tensor>(t) : std::nullopt; }

// Zeros shaped like `like`: the gradient of an output that reached no loss (RNNCell uses only h_n).
Tensor zeros_for(const Tensor& like) {
  if (!plain_cpu(like)) return at::zeros_like(like);
  Tensor z(at::detail::empty_cpu(like.sizes(), like.scalar_type()));  // no dispatcher: ~1 us less
  std::memset(z.data_ptr(), 0, z.nbytes());
  return z;
}

// The backward of rnn_forward. Its next edges are those of (input, hx, w_ih, w_hh, b_ih, b_hh), in
// that order (an absent hx or bias has an invalid edge).
struct RnnForwardBackward : public Node {
  enum Edge : size_t { kInput = 0, kHx, kWih, kWhh, kBih, kBhh };

  SavedVariable input_, batch_sizes_, hx_, w_ih_, w_hh_, output_;
  bool relu_ = false, reverse_ = false;

  std::string name() const override { return "RnnForwardBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : {&input_, &batch_sizes_, &hx_, &w_ih_, &w_hh_, &output_}) {
      v->reset_data();
    }
  }

  // grads: (grad_output, grad_h_n), either undefined when that output reached no loss.
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor input = input_.unpack(), w_ih = w_ih_.unpack(), w_hh = w_hh_.unpack();
    const Tensor output = output_.unpack(getptr());
    const bool need_b_ih = task_should_compute_output(kBih);
    const bool need_b_hh = task_should_compute_output(kBhh);
    const std::array<bool, 5> mask = {
        task_should_compute_output(kInput), task_should_compute_output(kHx),
        task_should_compute_output(kWih), task_should_compute_output(kWhh), need_b_ih || need_b_hh};
    const Tensor grad_output = grads[0].defined() ? grads[0] : zeros_for(output);
    auto call = [&] {
      return backward_op().call(grad_output, maybe(grads[1]), input, maybe(batch_sizes_.unpack()),
                                maybe(hx_.unpack()), w_ih, w_hh, output, relu_, reverse_, mask);
    };
    // Without create_graph the engine runs this with grad mode off: rnn_backward's autograd kernel
    // would record nothing, so skip it. With create_graph, through it, so that a second backward
    // reaches rnn_backward's node (csrc/composite.cpp), which differentiates it.
    // A tangent on the incoming gradients (forward-mode AD through a backward) also takes it.
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> res;
    if (at::GradMode::is_enabled() || composite::has_tangent(grads[0]) ||
        composite::has_tangent(grads[1])) {
      res = call();
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      res = call();
    }
    auto& [g_input, g_hx, g_w_ih, g_w_hh, g_bias] = res;
    return {mask[0] ? g_input : Tensor(), mask[1] ? g_hx : Tensor(), mask[2] ? g_w_ih : Tensor(),
            mask[3] ? g_w_hh : Tensor(), need_b_ih ? g_bias : Tensor(),
            need_b_hh ? g_bias : Tensor()};
  }
};

std::tuple<Tensor, Tensor> rnn_forward_autograd(c10::DispatchKeySet ks, const Tensor& input,
                                                const optional<Tensor>& batch_sizes,
                                                const optional<Tensor>& hx, const Tensor& w_ih,
                                                const Tensor& w_hh, const optional<Tensor>& b_ih,
                                                const optional<Tensor>& b_hh, bool relu,
                                                bool reverse) {
  if (composite::has_tangent(input) || composite::has_tangent(hx) || composite::has_tangent(w_ih) ||
      composite::has_tangent(w_hh) || composite::has_tangent(b_ih) || composite::has_tangent(b_hh)) {
    // Forward-mode AD: the composite of at:: ops, whose tangents (and gradients) ATen computes.
    return composite::rnn_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  }
  NodeRef<RnnForwardBackward> node;
  if (torch::autograd::compute_requires_grad(input, hx, w_ih, w_hh, b_ih, b_hh)) {
    node = make_node<RnnForwardBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(input, hx, w_ih, w_hh, b_ih, b_hh));
  }
  auto outs = [&] {  // the device kernel (as PyTorch's generated autograd kernels redispatch)
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().redispatch(ks & c10::after_autograd_keyset, input, batch_sizes, hx, w_ih,
                                   w_hh, b_ih, b_hh, relu, reverse);
  }();
  if (node) {  // nothing to differentiate otherwise: no node, outputs without history
    auto& [output, h_n] = outs;
    torch::autograd::set_history(output, node);
    torch::autograd::set_history(h_n, node);
    node->input_ = SavedVariable(input, false);
    node->batch_sizes_ = SavedVariable(batch_sizes.value_or(Tensor()), false);
    node->hx_ = SavedVariable(hx.value_or(Tensor()), false);
    node->w_ih_ = SavedVariable(w_ih, false);
    node->w_hh_ = SavedVariable(w_hh, false);
    node->output_ = SavedVariable(output, true);
    node->relu_ = relu;
    node->reverse_ = reverse;
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, Autograd, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);  // rnn_backward's: csrc/composite.cpp
}

}  // namespace rnnext
