// The composite ops over the per-layer op rnnext::rnn_forward (CompositeImplicitAutograd: one
// kernel for every device; autograd flows through rnn_forward's node, csrc/autograd.cpp; AOT
// autograd and torch.export's run_decompositions see the rnn_forward calls they decompose into,
// torch.export's training IR and torch.jit.trace one node). As ATen has rnn_tanh / rnn_relu over
// its layers and rnn_tanh_cell / rnn_relu_cell for one step:
//
// rnnext::rnn, the whole stack (layers, directions, dropout between layers): ATen's
// apply_layer_stack with rnn_forward for a layer's direction: the same at::cat of the two
// directions (on a call whose directions run at once, each thread writes its own half instead),
// the same at::dropout calls (torch.nn's RNG draws, training only, every layer but the last), the
// same at::stack of the final states.
//
// rnnext::rnn_cell, one step (RNNCell): rnn_forward over a one-step sequence, batched or not.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "cpu/plan.h"
#include "cpu/rnn_cpu.h"
#include "op_handles.h"

#include <c10/util/SmallVector.h>

#include <optional>
#include <vector>

namespace rnnext {
namespace {

using at::Tensor;
using std::optional;

// Whether a bidirectional layer may run its two directions at once, one thread each
// (cpu::concurrent_directions says when it pays): only on a call that records no autograd graph
// and runs under no mode or transform -- every tensor a plain dense CPU tensor, and nothing beyond
// the defaults (BackendSelect, ADInplaceOrView) in the thread-local include set (not Python
// dispatch, functionalization, functorch or tracing) -- so that each direction is the plain CPU
// kernel, safe to run off the calling thread.
bool plain_cpu_call(const Tensor& x, const optional<Tensor>& hx, at::TensorList weights) {
  if (at::in_parallel_region()) return false;
  static const c10::DispatchKeySet defaults{c10::DispatchKey::BackendSelect,
                                           c10::DispatchKey::ADInplaceOrView};
  if ((c10::impl::tls_local_dispatch_key_set().included_ | defaults) != defaults) return false;
  // A dense CPU tensor, inference tensors included; no Python, functorch, conjugate, ... key.
  static const c10::DispatchKeySet allowed{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                          c10::DispatchKey::AutogradCPU,
                                          c10::DispatchKey::AutocastCPU};
  const bool grad = at::GradMode::is_enabled();
  const auto ok = [&](const Tensor& t) {
    const c10::DispatchKeySet keys = t.key_set();
    return keys.has(c10::DispatchKey::CPU) && (keys | allowed) == allowed &&  // a subset
           t.layout() == at::kStrided && !(grad && t.requires_grad());
  };
  if (!ok(x) || (hx.has_value() && !ok(*hx))) return false;
  for (const Tensor& w : weights) {
    if (!ok(w)) return false;
  }
  return true;
}

std::tuple<Tensor, Tensor> rnn_stack(const Tensor& input, const optional<Tensor>& batch_sizes,
                                     const optional<Tensor>& hx, at::TensorList weights,
                                     bool has_biases, int64_t num_layers, double dropout,
                                     bool train, bool bidirectional, bool batch_first, bool relu) {
  const int64_t dirs = bidirectional ? 2 : 1, per = has_biases ? 4 : 2;
  TORCH_CHECK(num_layers >= 1, "rnnext::rnn: num_layers must be at least 1, got ", num_layers);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == num_layers * dirs * per, "rnnext::rnn: ",
              num_layers, " layers x ", dirs, " directions x ", per, " tensors (has_biases=",
              has_biases, ") need ", num_layers * dirs * per, " weights, got ", weights.size());
  const bool packed = batch_sizes.has_value();
  Tensor x = input;
  if (!packed) {
    TORCH_CHECK(input.dim() == 3, "rnnext::rnn: padded input must be 3-D ([T, B, I], or [B, T, I] "
                "with batch_first), got ", input.dim(), "-D");
    if (batch_first) x = input.transpose(0, 1);
    // As ATen's padded rnn_tanh / rnn_relu: every tensor on the input's device (rnn_forward
    // lets a mix of meta and real tensors through, as ATen's mm does), and T > 0 (rnn_forward
    // itself accepts T = 0).
    const auto device = input.device();
    TORCH_CHECK(!hx.has_value() || hx->device() == device, "rnnext::rnn: hx is on ", hx->device(),
                " but input is on ", device);
    for (const Tensor& w : weights) {
      TORCH_CHECK(w.device() == device, "rnnext::rnn: a weight is on ", w.device(),
                  " but input is on ", device);
    }
    TORCH_CHECK(x.sym_size(0) != 0, "Expected sequence length to be larger than 0 in RNN");
  }
  // Each layer and direction's initial state as a view of hx: one backward node for them all
  // (unbind; squeeze for a single one), where hx[k] would make one per state.
  c10::SmallVector<Tensor, 8> h0s;
  if (hx.has_value()) {
    TORCH_CHECK(hx->dim() == 3 && hx->sym_size(0) == num_layers * dirs,
                "rnnext::rnn: hx must be [num_layers * directions = ", num_layers * dirs,
                ", B, H], got ", hx->sym_sizes());
    if (num_layers * dirs == 1) {
      h0s.push_back(hx->squeeze(0));
    } else {
      for (Tensor& h : hx->unbind(0)) h0s.push_back(std::move(h));
    }
  }
  const auto& layer_op = forward_op();
  const bool plain = dirs == 2 && plain_cpu_call(x, hx, weights);
  c10::SmallVector<Tensor, 8> finals;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    Tensor outs[2], h_ns[2];
    // Direction d of this layer: rnn_forward into outs[d] and h_ns[d], or, given `into` (its half
    // of the layer's output), rnn_forward's CPU code writing there and into h_ns[d] (allocated by
    // the caller).
    const auto direction = [&](int64_t d, const Tensor* into = nullptr) {
      const int64_t k = layer * dirs + d;
      const Tensor* w = weights.data() + k * per;
      const optional<Tensor> h0 = hx ? optional<Tensor>(h0s[k]) : std::nullopt;
      const optional<Tensor> b_ih = has_biases ? optional<Tensor>(w[2]) : std::nullopt;
      const optional<Tensor> b_hh = has_biases ? optional<Tensor>(w[3]) : std::nullopt;
      if (into != nullptr) {
        cpu::rnn_forward_into(x, batch_sizes, h0, w[0], w[1], b_ih, b_hh, relu, d == 1, *into,
                              h_ns[d]);
      } else {
        std::tie(outs[d], h_ns[d]) =
            layer_op.call(x, batch_sizes, h0, w[0], w[1], b_ih, b_hh, relu, d == 1);
      }
    };
    const int64_t h = weights[layer * dirs * per + 1].size(0);
    const bool concurrent =
        plain && cpu::concurrent_directions(at::get_num_threads(),
                                            x.dim() == 3 ? x.size(0) * x.size(1) : x.size(0),
                                            x.size(-1), h);
    Tensor y;
    if (concurrent) {
      // Each thread writes its direction straight into its half of the layer's output (rows 2H
      // apart: rnn_forward's CPU kernel through cpu::rnn_forward_into), where each direction's
      // own output tensor was allocated, faulted in and copied over (benchmarks/NOTES.md
      // sections 46 and 55).
      std::vector<int64_t> shape = x.sizes().vec();
      shape.back() = 2 * h;
      y = at::empty(shape, x.options());
      cpu::poison(y);
      // h_n here, on the calling thread: allocated by the workers (in their glibc arenas), the
      // stack's layer outputs were faulted in again at every call in 11 processes of 11, against
      // 6 of 11 when allocated here (benchmarks/NOTES.md section 55).
      const int64_t batch = !packed                    ? x.size(1)
                            : batch_sizes->numel() > 0 ? batch_sizes->data_ptr<int64_t>()[0]
                                                       : 0;
      for (Tensor& hn : h_ns) {
        hn = at::empty({batch, h}, x.options());
        cpu::poison(hn);
      }
      const at::ThreadLocalState state;  // grad mode, dispatch state, ... for the other thread
      at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
        const at::ThreadLocalStateGuard guard(state);
        for (int64_t d = begin; d < end; ++d) {
          const Tensor half = y.narrow(-1, d * h, h);
          direction(d, &half);
        }
      });
    } else {
      for (int64_t d = 0; d < dirs; ++d) direction(d);
      y = dirs == 1 ? outs[0] : at::cat({outs[0], outs[1]}, -1);
    }
    for (int64_t d = 0; d < dirs; ++d) finals.push_back(std::move(h_ns[d]));
    x = std::move(y);
    if (dropout != 0 && train && layer < num_layers - 1) x = at::dropout(x, dropout, true);
  }
  Tensor h_n =
      finals.size() == 1 ? finals[0].unsqueeze(0) : at::stack(at::TensorList(finals), 0);
  return {!packed && batch_first ? x.transpose(0, 1) : x, std::move(h_n)};
}

// input [B, I] with hx [B, H] or None -> h' [B, H]; unbatched input [I] with hx [H] or None -> [H].
Tensor rnn_cell(const Tensor& input, const optional<Tensor>& hx, const Tensor& w_ih,
                const Tensor& w_hh, const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                bool relu) {
  const int64_t dim = input.dim();
  TORCH_CHECK(dim == 1 || dim == 2, "rnnext::rnn_cell: input must be [B, I] or [I], got ", dim,
              "-D");
  TORCH_CHECK(!hx.has_value() || hx->dim() == dim, "rnnext::rnn_cell: hx must be ",
              dim == 2 ? "[B, H]" : "[H]", " for a ", dim, "-D input, got ", hx->dim(), "-D");
  // A one-step sequence [1, B, I] (B = 1 unbatched: one view, which also serves I = 0).
  const Tensor x =
      dim == 2 ? input.unsqueeze(0)
               : input.view_symint({c10::SymInt(1), c10::SymInt(1), input.sym_size(0)});
  optional<Tensor> h0 = hx;
  if (dim == 1 && hx.has_value()) h0 = hx->unsqueeze(0);
  Tensor h =
      std::get<1>(forward_op().call(x, std::nullopt, h0, w_ih, w_hh, b_ih, b_hh, relu, false));
  return dim == 2 ? h : h.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CompositeImplicitAutograd, m) {
  m.impl("rnn", &rnn_stack);
  m.impl("rnn_cell", &rnn_cell);
}

// Under torch.func.vmap they decompose as well (functorch has no batching rule for them, and its
// per-entry fallback refuses the stack's Tensor[] argument): each rnn_forward then runs once per
// vmapped entry (functorch's fallback), the views, cat and stack around them by their own rules.
TORCH_LIBRARY_IMPL(rnnext, FuncTorchBatchedDecomposition, m) {
  m.impl("rnn", &rnn_stack);
  m.impl("rnn_cell", &rnn_cell);
}

}  // namespace rnnext
