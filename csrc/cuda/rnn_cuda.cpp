// CUDA glue: checks arguments (rnn_common.h, shared with the CPU), allocates outputs, runs the
// large GEMMs (input projection, weight gradients) through ATen once per call, and the recurrence
// through the kernels of rnn_kernels.cu: a persistent kernel when W_hh fits in shared memory, else
// one cuBLAS GEMM (straight on the handle, no dispatcher) plus one pointwise kernel per step.
//
// Nothing here synchronises with the host: the batch sizes of packed input go to the device with a
// non-blocking copy from pinned memory, and padded input needs no device-side geometry at all, so
// the ops capture into CUDA graphs.
//
// RNNEXT_CUDA_PATH=persistent|smem|cluster|fallback (environment, read per call) forces one
// recurrence path, for tests: "persistent" takes a persistent kernel whenever one fits, "smem" only
// the single-CTA shared-memory one, "cluster" only the thread-block-cluster one (sm_90), "tiled" the
// register-blocked batch-tile x hidden-split kernel of issue 14 (not in the automatic choice: it has
// never run on a GPU); each still falls back to the per-step path when its kernel cannot run.
#include <ATen/Functions.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../rnn_backward_tail.h"
#include "../rnn_common.h"
#include "plan_info.h"
#include "rnn_kernels.h"

namespace rnnext {
namespace {

using at::Tensor;
using c10::optional;

cuda::DType to_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat:
      return cuda::DType::Float;
    case at::kDouble:
      return cuda::DType::Double;
    case at::kHalf:
      return cuda::DType::Half;
    case at::kBFloat16:
      return cuda::DType::BFloat16;
    default:
      TORCH_CHECK(false, "rnnext: the CUDA kernels support float32, float64, float16 and bfloat16, got ",
                  st);
  }
}

cuda::Path path_from_env() {
  const char* v = std::getenv("RNNEXT_CUDA_PATH");
  if (v == nullptr) return cuda::Path::Auto;
  if (std::strcmp(v, "persistent") == 0) return cuda::Path::Persistent;
  if (std::strcmp(v, "fallback") == 0) return cuda::Path::Fallback;
  if (std::strcmp(v, "smem") == 0) return cuda::Path::PersistentSmem;
  if (std::strcmp(v, "cluster") == 0) return cuda::Path::PersistentCluster;
  if (std::strcmp(v, "tiled") == 0) return cuda::Path::Tiled;
  return cuda::Path::Auto;
}

void check_cuda(const Geometry& g, const Tensor& input) {
  TORCH_CHECK(input.is_cuda(), "rnnext: expected CUDA tensors, got input on ", input.device());
  to_dtype(input.scalar_type());
  TORCH_CHECK(g.T <= std::numeric_limits<int32_t>::max(),
              "rnnext: the CUDA kernels support fewer than 2^31 time steps, got ", g.T);
}

// Sequence geometry for the kernels; `meta` keeps the device copy of the packed batch sizes alive.
cuda::Seq make_seq(const Geometry& g, bool reverse, const Tensor& input, Tensor* meta) {
  cuda::Seq seq;
  seq.T = g.T;
  seq.B = g.B;
  seq.H = g.H;
  seq.reverse = reverse;
  seq.device = input.device().index();
  if (g.packed && g.T > 0) {
    Tensor host =
        at::empty({2 * g.T + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* p = host.data_ptr<int64_t>();
    std::memcpy(p, g.batch_sizes.data(), g.T * sizeof(int64_t));
    std::memcpy(p + g.T, g.offsets.data(), (g.T + 1) * sizeof(int64_t));
    // Non-blocking from pinned memory: no host sync; the caching host allocator keeps the buffer
    // until the copy has run.
    *meta = host.to(at::TensorOptions().device(input.device()), /*non_blocking=*/true);
    seq.meta = meta->data_ptr<int64_t>();
  }
  return seq;
}

// C[rows, n] (row-major, ldc) = X[rows, k] @ op(W) + beta * C, with op(W) = W^T for W [n, k]
// (trans_w) or W for W [k, n]. One cuBLAS call on the current stream, accumulating in float (in
// double for float64). Row-major C = X op(W) is column-major C^T = op(W)^T X^T.
void gemm_rows(at::ScalarType st, bool trans_w, int64_t rows, int64_t n, int64_t k, const void* x,
               int64_t ldx, const void* w, int64_t ldw, bool accumulate, void* c, int64_t ldc) {
  if (rows <= 0 || n <= 0) return;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  const cublasOperation_t op_w = trans_w ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
  if (st == at::kDouble) {
    const double alpha = 1.0, beta = accumulate ? 1.0 : 0.0;
    TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, op_w, CUBLAS_OP_N, m_, n_, k_, &alpha, w, CUDA_R_64F,
                                      static_cast<int>(ldw), x, CUDA_R_64F, static_cast<int>(ldx),
                                      &beta, c, CUDA_R_64F, static_cast<int>(ldc),
                                      CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  const cudaDataType_t type = st == at::kFloat  ? CUDA_R_32F
                              : st == at::kHalf ? CUDA_R_16F
                                                : CUDA_R_16BF;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, op_w, CUBLAS_OP_N, m_, n_, k_, &alpha, w, type,
                                    static_cast<int>(ldw), x, type, static_cast<int>(ldx), &beta, c,
                                    type, static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

// Byte offset of row r in an [*, H] buffer of element size es.
inline char* row_ptr(void* base, int64_t r, int64_t H, size_t es) {
  return static_cast<char*>(base) + static_cast<size_t>(r * H) * es;
}
inline const char* row_ptr(const void* base, int64_t r, int64_t H, size_t es) {
  return static_cast<const char*>(base) + static_cast<size_t>(r * H) * es;
}

int64_t bs_at(const Geometry& g, int64_t t) { return (t >= 0 && t < g.T) ? g.batch_sizes[t] : 0; }

// The per-step fallback of the forward recurrence (same structure as the CPU core).
void forward_fallback(const Geometry& g, at::ScalarType st, const Tensor& w, const Tensor* hx,
                      Tensor& out, Tensor& h_n, bool relu, bool reverse, cudaStream_t stream) {
  const int64_t H = g.H;
  const size_t es = out.element_size();
  void* o = out.data_ptr();
  const void* wp = w.data_ptr();
  const void* h0 = hx != nullptr ? hx->data_ptr() : nullptr;
  for (int64_t i = 0; i < g.T; ++i) {
    const int64_t t = reverse ? g.T - 1 - i : i;
    const int64_t n = g.batch_sizes[t];
    const int64_t carried = reverse ? bs_at(g, t + 1) : (t > 0 ? n : 0);
    const int64_t prev = reverse ? t + 1 : t - 1;
    void* cur = row_ptr(o, g.offsets[t], H, es);
    if (carried > 0) {
      gemm_rows(st, true, carried, H, H, row_ptr(o, g.offsets[prev], H, es), H, wp, H, true, cur, H);
    }
    if (h0 != nullptr && n > carried) {
      gemm_rows(st, true, n - carried, H, H, row_ptr(h0, carried, H, es), H, wp, H, true,
                row_ptr(cur, carried, H, es), H);
    }
    const int64_t done_from = reverse ? (t == 0 ? 0 : n) : bs_at(g, t + 1);
    cuda::forward_step_pointwise(to_dtype(st), cur, n, H, h_n.data_ptr(), done_from, relu, stream);
  }
}

void backward_fallback(const Geometry& g, at::ScalarType st, const Tensor& w, const Tensor& go,
                       const Tensor* ghn, const Tensor& out, Tensor& dpre, Tensor* grad_hx,
                       bool relu, bool reverse, cudaStream_t stream) {
  const int64_t H = g.H;
  const size_t es = dpre.element_size();
  void* d = dpre.data_ptr();
  const void* wp = w.data_ptr();
  for (int64_t i = 0; i < g.T; ++i) {
    // Undo the forward order.
    const int64_t t = reverse ? i : g.T - 1 - i;
    const int64_t n = g.batch_sizes[t];
    // The step that consumed h_t (t+1 forward, t-1 reverse) and how many of its rows did.
    const int64_t next = reverse ? t - 1 : t + 1;
    const int64_t fed = reverse ? (t > 0 ? n : 0) : bs_at(g, t + 1);
    const int64_t final_from = reverse ? (t == 0 ? 0 : n) : fed;
    void* cur = row_ptr(d, g.offsets[t], H, es);
    if (fed > 0) {
      gemm_rows(st, false, fed, H, H, row_ptr(d, g.offsets[next], H, es), H, wp, H, false, cur, H);
    }
    cuda::backward_step_pointwise(to_dtype(st), cur, row_ptr(go.data_ptr(), g.offsets[t], H, es),
                                  row_ptr(out.data_ptr(), g.offsets[t], H, es),
                                  ghn != nullptr ? ghn->data_ptr() : nullptr, n, H, fed, final_from,
                                  relu, stream);
    if (grad_hx != nullptr) {
      // Rows that started from hx at this step pass their gradient to grad_hx.
      const int64_t carried = reverse ? bs_at(g, t + 1) : (t > 0 ? n : 0);
      if (n > carried) {
        gemm_rows(st, false, n - carried, H, H, row_ptr(cur, carried, H, es), H, wp, H, false,
                  row_ptr(grad_hx->data_ptr(), carried, H, es), H);
      }
    }
  }
}

std::tuple<Tensor, Tensor> rnn_forward_cuda(const Tensor& input, const optional<Tensor>& batch_sizes,
                                            const optional<Tensor>& hx, const Tensor& w_ih,
                                            const Tensor& w_hh, const optional<Tensor>& b_ih,
                                            const optional<Tensor>& b_hh, bool relu, bool reverse) {
  const Geometry g = make_geometry(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh);
  check_cuda(g, input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto opts = input.options();
  Tensor out =
      at::empty(g.packed ? at::IntArrayRef{g.N, g.H} : at::IntArrayRef{g.T, g.B, g.H}, opts);
  Tensor h_n = at::empty({g.B, g.H}, opts);
  if (g.N == 0 || g.H == 0) {
    if (hx.has_value()) h_n.copy_(*hx); else h_n.zero_();
    return {out, h_n};
  }
  // Input projection for every step in one GEMM, written straight into the output buffer.
  Tensor out2d = out.view({g.N, g.H});
  Tensor x2d = input.reshape({g.N, g.I});
  if (b_ih.has_value() || b_hh.has_value()) {
    Tensor bias = b_ih.has_value() && b_hh.has_value() ? at::add(*b_ih, *b_hh)
                  : b_ih.has_value()                  ? *b_ih
                                                      : *b_hh;
    at::addmm_out(out2d, bias, x2d, w_ih.t());
  } else {
    at::mm_out(out2d, x2d, w_ih.t());
  }
  const Tensor w = w_hh.contiguous();
  const Tensor h0 = hx.has_value() ? hx->contiguous() : Tensor();
  Tensor meta;
  const cuda::Seq seq = make_seq(g, reverse, input, &meta);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool done = cuda::persistent_forward(to_dtype(input.scalar_type()), seq, w.data_ptr(),
                                             hx.has_value() ? h0.data_ptr() : nullptr,
                                             out.data_ptr(), h_n.data_ptr(), relu, path_from_env(),
                                             stream);
  if (!done) {
    forward_fallback(g, input.scalar_type(), w, hx.has_value() ? &h0 : nullptr, out, h_n, relu,
                     reverse, stream);
  }
  return {out, h_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward_cuda(
    const Tensor& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const optional<Tensor>& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, bool relu, bool reverse,
    std::array<bool, 5> output_mask) {
  const Geometry g = make_geometry(input, batch_sizes, hx, w_ih, w_hh, {}, {});
  check_cuda(g, input);
  check_backward(g, input, grad_output, grad_h_n, output);
  const c10::cuda::CUDAGuard guard(input.device());
  auto opts = input.options();
  const bool want_hx = output_mask[1];
  Tensor dpre = at::empty({g.N, g.H}, opts);
  Tensor grad_hx = at::empty({0}, opts);
  const Tensor out = output.contiguous();
  const Tensor h0 = hx.has_value() ? hx->contiguous() : Tensor();
  Tensor meta;
  const cuda::Seq seq = make_seq(g, reverse, input, &meta);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (g.N > 0 && g.H > 0) {
    // Every row of grad_hx is written: each entry starts from hx at exactly one step.
    if (want_hx) grad_hx = at::empty({g.B, g.H}, opts);
    const Tensor go = grad_output.contiguous();
    const Tensor ghn = grad_h_n.has_value() ? grad_h_n->contiguous() : Tensor();
    const Tensor w = w_hh.contiguous();
    const bool done = cuda::persistent_backward(
        to_dtype(input.scalar_type()), seq, w.data_ptr(), go.data_ptr(),
        grad_h_n.has_value() ? ghn.data_ptr() : nullptr, out.data_ptr(), dpre.data_ptr(),
        want_hx ? grad_hx.data_ptr() : nullptr, relu, path_from_env(), stream);
    if (!done) {
      backward_fallback(g, input.scalar_type(), w, go, grad_h_n.has_value() ? &ghn : nullptr, out,
                        dpre, want_hx ? &grad_hx : nullptr, relu, reverse, stream);
    }
  } else {
    dpre.zero_();
    if (want_hx) {
      // No step ran (or H = 0): h_n is hx itself.
      grad_hx = grad_h_n.has_value() ? grad_h_n->clone(at::MemoryFormat::Contiguous)
                                     : at::zeros({g.B, g.H}, opts);
    }
  }
  // Everything else is one large GEMM (or reduction) over all rows.
  return backward_tail(g, input, w_ih, dpre, Tensor(), grad_hx, output_mask, [&](Tensor& h_prev) {
    cuda::gather_prev(to_dtype(input.scalar_type()), seq, out.data_ptr(),
                      hx.has_value() ? h0.data_ptr() : nullptr, h_prev.data_ptr(), stream);
  });
}

}  // namespace

const char* planned_path(at::ScalarType dtype, int64_t B, int64_t H, bool backward) {
  return cuda::plan_name(to_dtype(dtype), B, H, path_from_env(), backward);
}

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace rnnext
