// Argument checks and sequence geometry shared by every device's glue layer.
// Lean on purpose: no torch/extension.h, so each translation unit compiles quickly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace rnnext {

// Where each time step's rows live. Padded input is the packed case with every batch size = B.
struct Geometry {
  int64_t T = 0;  // time steps
  int64_t B = 0;  // batch (the largest batch size when packed)
  int64_t I = 0;  // input features
  int64_t H = 0;  // hidden features
  int64_t N = 0;  // rows in total: sum of batch sizes
  bool packed = false;
  std::vector<int64_t> batch_sizes;  // T entries, non-increasing
  std::vector<int64_t> offsets;      // T + 1 entries: first row of each step, then N
};

inline void check_same(const at::Tensor& ref, const at::Tensor& t, const char* ref_name,
                       const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnnext: ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; all floating tensors must share one dtype");
  TORCH_CHECK(t.device() == ref.device(), "rnnext: ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; all tensors must be on one device");
}

// Validates every argument of rnn_forward / rnn_backward and returns the geometry.
inline Geometry make_geometry(const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
                              const c10::optional<at::Tensor>& hx, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh) {
  Geometry g;
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "rnnext: input must be a floating point tensor, got ", input.scalar_type());
  TORCH_CHECK(w_ih.dim() == 2, "rnnext: w_ih must be 2-D [hidden, input], got shape ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == w_hh.size(1),
              "rnnext: w_hh must be square 2-D [hidden, hidden], got shape ", w_hh.sizes());
  g.H = w_hh.size(0);
  g.I = w_ih.size(1);
  TORCH_CHECK(w_ih.size(0) == g.H, "rnnext: w_ih has ", w_ih.size(0), " rows but w_hh has ", g.H);
  check_same(input, w_ih, "input", "w_ih");
  check_same(input, w_hh, "input", "w_hh");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (b->has_value()) {
      const at::Tensor& t = **b;
      check_same(input, t, "input", b == &b_ih ? "b_ih" : "b_hh");
      TORCH_CHECK(t.dim() == 1 && t.size(0) == g.H, "rnnext: ", b == &b_ih ? "b_ih" : "b_hh",
                  " must have shape [", g.H, "], got ", t.sizes());
    }
  }
  if (batch_sizes.has_value()) {
    const at::Tensor& bs = *batch_sizes;
    g.packed = true;
    TORCH_CHECK(bs.scalar_type() == at::kLong && bs.dim() == 1 && bs.device().is_cpu(),
                "rnnext: batch_sizes must be a 1-D int64 CPU tensor, got ", bs.scalar_type(), " ",
                bs.sizes(), " on ", bs.device());
    TORCH_CHECK(input.dim() == 2, "rnnext: packed input must be 2-D [rows, input], got shape ",
                input.sizes());
    auto bsc = bs.contiguous();
    const int64_t* p = bsc.data_ptr<int64_t>();
    g.T = bs.size(0);
    g.batch_sizes.assign(p, p + g.T);
    g.B = g.T > 0 ? g.batch_sizes[0] : 0;
  } else {
    TORCH_CHECK(input.dim() == 3, "rnnext: input must be 3-D [time, batch, input], got shape ",
                input.sizes());
    g.T = input.size(0);
    g.B = input.size(1);
    g.batch_sizes.assign(g.T, g.B);
  }
  g.offsets.resize(g.T + 1);
  g.offsets[0] = 0;
  // Padded input (every entry B) may have B = 0: no rows, empty outputs (OPS.md). Packed entries
  // must be >= 1, as in a PackedSequence.
  const int64_t min_batch = g.packed ? 1 : 0;
  for (int64_t t = 0; t < g.T; ++t) {
    const int64_t b = g.batch_sizes[t];
    TORCH_CHECK(b >= min_batch && (t == 0 || b <= g.batch_sizes[t - 1]),
                "rnnext: batch_sizes must be positive and non-increasing; entry ", t, " is ", b);
    g.offsets[t + 1] = g.offsets[t] + b;
  }
  g.N = g.offsets[g.T];
  const int64_t rows = g.packed ? input.size(0) : g.N;
  TORCH_CHECK(rows == g.N, "rnnext: packed input has ", rows,
              " rows but batch_sizes add up to ", g.N);
  TORCH_CHECK(input.size(-1) == g.I, "rnnext: input has ", input.size(-1),
              " features but w_ih expects ", g.I);
  if (hx.has_value()) {
    check_same(input, *hx, "input", "hx");
    TORCH_CHECK(hx->dim() == 2 && hx->size(0) == g.B && hx->size(1) == g.H,
                "rnnext: hx must have shape [", g.B, ", ", g.H, "], got ", hx->sizes());
  }
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(g.B <= kIntMax && g.H <= kIntMax && g.I <= kIntMax,
              "rnnext: batch, hidden and input sizes must each be below 2^31");
  return g;
}

// rnn_backward's own arguments against the geometry: the incoming gradients and the saved output.
inline void check_backward(const Geometry& g, const at::Tensor& input,
                           const at::Tensor& grad_output,
                           const c10::optional<at::Tensor>& grad_h_n, const at::Tensor& output) {
  check_same(input, grad_output, "input", "grad_output");
  check_same(input, output, "input", "output");
  TORCH_CHECK(output.numel() == g.N * g.H && grad_output.sizes() == output.sizes(),
              "rnnext: output and grad_output must have the forward output's shape [rows, ", g.H,
              "], got ", output.sizes(), " and ", grad_output.sizes());
  if (grad_h_n.has_value()) {
    check_same(input, *grad_h_n, "input", "grad_h_n");
    TORCH_CHECK(grad_h_n->dim() == 2 && grad_h_n->size(0) == g.B && grad_h_n->size(1) == g.H,
                "rnnext: grad_h_n must have shape [", g.B, ", ", g.H, "], got ", grad_h_n->sizes());
  }
}

}  // namespace rnnext
