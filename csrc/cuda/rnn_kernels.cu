// CUDA kernels of the Elman recurrence (see rnn_kernels.h for the contract, csrc/OPS.md for the math).
//
// Persistent kernels: one thread block per tile of batch entries runs every time step. W_hh (or its
// transpose, for the backward) is copied once into shared memory in the accumulation type; the
// tile's state lives in two shared buffers (read one, write the other: one barrier per step).
// Batch tiles are independent, so no grid-wide barrier is needed. Each output h_t[b, j] is a dot
// product of length H computed by a group of G lanes (G a power of two <= 32, inside one warp) and
// reduced with warp shuffles.
//
// Packed sequences: entries are sorted by length (batch sizes non-increasing), so at step t the
// active entries are b < batch_sizes[t]. Inactive entries keep their state unchanged. With the
// state initialised to hx (or 0) this gives every case of OPS.md at once: forward, an entry's state
// freezes after its last step (= its h_n); reverse, an entry starts from hx at its own last step.
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "rnn_kernels.h"

namespace rnnext {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Types: storage S, accumulation Acc<S> (float for float/half/bfloat16, double for double).

template <typename S>
struct AccT {
  using type = float;
};
template <>
struct AccT<double> {
  using type = double;
};
template <typename S>
using Acc = typename AccT<S>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename S>
__device__ __forceinline__ S from_acc(Acc<S> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float tanh_acc(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_acc(double x) { return tanh(x); }

// relu keeps NaN (as torch.relu does): NaN < 0 is false.
template <typename A>
__device__ __forceinline__ A activate(A x, bool relu) {
  return relu ? (x < A(0) ? A(0) : x) : tanh_acc(x);
}

// d act / d pre, written in terms of the output h = act(pre).
template <typename A>
__device__ __forceinline__ A activate_backward(A g, A h, bool relu) {
  return relu ? (h > A(0) ? g : A(0)) : g * (A(1) - h * h);
}

// Batch size and first row of step t.
__device__ __forceinline__ int64_t step_rows(const int64_t* meta, int64_t B, int64_t t) {
  return meta != nullptr ? meta[t] : B;
}
__device__ __forceinline__ int64_t step_offset(const int64_t* meta, int64_t T, int64_t B, int64_t t) {
  return meta != nullptr ? meta[T + t] : t * B;
}

template <typename A>
__device__ __forceinline__ A group_sum(A v, int G) {
  for (int m = G >> 1; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Dot product of a shared-memory row of W (stride 1) with a shared-memory state row, split over
// the G lanes of a group (lane, lane + G, ...), reduced over the group. Every lane of the warp must
// call it (shuffles).
template <typename A>
__device__ __forceinline__ A group_dot(const A* __restrict__ w, const A* __restrict__ h, int H,
                                       int lane, int G) {
  A acc0 = A(0), acc1 = A(0);
  int k = lane;
  for (; k + G < H; k += 2 * G) {
    acc0 += w[k] * h[k];
    acc1 += w[k + G] * h[k + G];
  }
  if (k < H) acc0 += w[k] * h[k];
  return group_sum(acc0 + acc1, G);
}

// ---------------------------------------------------------------------------------------------
// Persistent forward.

template <typename S>
struct FwdParams {
  int64_t T, B;
  int H, BT, G, ldw;
  const int64_t* meta;
  bool reverse, relu;
  const S* w_hh;  // [H, H]
  const S* hx;    // [B, H] or nullptr
  S* out;         // [N, H]: projection in, h_t out
  S* h_n;         // [B, H]
};

template <typename S>
__global__ void __launch_bounds__(1024) persistent_forward_kernel(const FwdParams<S> p) {
  using A = Acc<S>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* w = reinterpret_cast<A*>(smem_raw);  // [H, ldw]: w[j * ldw + k] = W_hh[j, k]
  A* state = w + static_cast<int64_t>(p.H) * p.ldw;  // 2 buffers of [BT, H]
  const int H = p.H;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int total = bt * H;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int G = p.G, lane = tid % G, group = tid / G, ngroups = nthreads / G;

  for (int64_t i = tid; i < static_cast<int64_t>(H) * H; i += nthreads) {
    const int64_t j = i / H, k = i % H;
    w[j * p.ldw + k] = to_acc(p.w_hh[i]);
  }
  for (int i = tid; i < total; i += nthreads) {
    state[i] = p.hx != nullptr ? to_acc(p.hx[b0 * H + i]) : A(0);
  }
  __syncthreads();

  int cur = 0;
  for (int64_t s = 0; s < p.T; ++s) {
    const int64_t t = p.reverse ? p.T - 1 - s : s;
    const int64_t rows = step_rows(p.meta, p.B, t);
    const int64_t off = step_offset(p.meta, p.T, p.B, t);
    const A* hc = state + cur * p.BT * H;
    A* hn = state + (cur ^ 1) * p.BT * H;
    for (int base = 0; base < total; base += ngroups) {
      const int o = base + group;
      const bool valid = o < total;
      const int b = valid ? o / H : 0, j = valid ? o % H : 0;
      const bool active = valid && b0 + b < rows;
      S* dst = p.out + (off + b0 + b) * H + j;
      A pre = A(0);
      if (active && lane == 0) pre = to_acc(*dst);  // issued before the dot: hides its latency
      const A acc = group_dot(w + static_cast<int64_t>(j) * p.ldw, hc + b * H, H, lane, G);
      if (valid && lane == 0) {
        if (active) {
          const S h = from_acc<S>(activate(acc + pre, p.relu));
          *dst = h;
          hn[o] = to_acc(h);  // the state is rounded to the storage dtype each step
        } else {
          hn[o] = hc[o];
        }
      }
    }
    __syncthreads();
    cur ^= 1;
  }
  const A* hf = state + cur * p.BT * H;
  for (int i = tid; i < total; i += nthreads) p.h_n[b0 * H + i] = from_acc<S>(hf[i]);
}

// ---------------------------------------------------------------------------------------------
// Persistent backward: the reverse of the forward's order; state = dpre of each entry's most
// recently processed step, kept in the accumulation type.

template <typename S>
struct BwdParams {
  int64_t T, B;
  int H, BT, G, ldw;
  const int64_t* meta;
  bool reverse, relu;
  const S* w_hh;      // [H, H]
  const S* grad_out;  // [N, H]
  const S* grad_h_n;  // [B, H] or nullptr
  const S* out;       // [N, H]
  S* dpre;            // [N, H]
  S* grad_hx;         // [B, H] or nullptr
};

template <typename S>
__global__ void __launch_bounds__(1024) persistent_backward_kernel(const BwdParams<S> p) {
  using A = Acc<S>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* wt = reinterpret_cast<A*>(smem_raw);  // [H, ldw]: wt[j * ldw + k] = W_hh[k, j]
  A* state = wt + static_cast<int64_t>(p.H) * p.ldw;
  const int H = p.H;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int total = bt * H;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int G = p.G, lane = tid % G, group = tid / G, ngroups = nthreads / G;

  for (int64_t i = tid; i < static_cast<int64_t>(H) * H; i += nthreads) {
    const int64_t k = i / H, j = i % H;  // W_hh[k, j]
    wt[j * p.ldw + k] = to_acc(p.w_hh[i]);
  }
  for (int i = tid; i < total; i += nthreads) state[i] = A(0);
  __syncthreads();

  int cur = 0;
  int64_t prev_rows = 0;  // batch size of the previously processed step (0 before the first)
  for (int64_t s = 0; s < p.T; ++s) {
    const int64_t t = p.reverse ? s : p.T - 1 - s;
    const int64_t rows = step_rows(p.meta, p.B, t);
    const int64_t off = step_offset(p.meta, p.T, p.B, t);
    const A* dc = state + cur * p.BT * H;
    A* dn = state + (cur ^ 1) * p.BT * H;
    for (int base = 0; base < total; base += ngroups) {
      const int o = base + group;
      const bool valid = o < total;
      const int b = valid ? o / H : 0, j = valid ? o % H : 0;
      const int64_t e = b0 + b;  // batch entry
      const bool active = valid && e < rows;
      const int64_t idx = (off + e) * H + j;
      A g = A(0), h = A(0);
      if (active && lane == 0) {
        g = to_acc(p.grad_out[idx]);
        // An entry processed here for the first time holds the final state h_n.
        if (p.grad_h_n != nullptr && e >= prev_rows) g += to_acc(p.grad_h_n[e * H + j]);
        h = to_acc(p.out[idx]);
      }
      const A acc = group_dot(wt + static_cast<int64_t>(j) * p.ldw, dc + b * H, H, lane, G);
      if (valid && lane == 0) {
        if (active) {
          const A d = activate_backward(g + acc, h, p.relu);
          p.dpre[idx] = from_acc<S>(d);
          dn[o] = d;
        } else {
          dn[o] = dc[o];
        }
      }
    }
    __syncthreads();
    cur ^= 1;
    prev_rows = rows;
  }
  if (p.grad_hx != nullptr) {
    // Each entry's state is now the dpre of the step at which it started from hx.
    const A* dc = state + cur * p.BT * H;
    for (int base = 0; base < total; base += ngroups) {
      const int o = base + group;
      const bool valid = o < total;
      const int b = valid ? o / H : 0, j = valid ? o % H : 0;
      const A acc = group_dot(wt + static_cast<int64_t>(j) * p.ldw, dc + b * H, H, lane, G);
      if (valid && lane == 0) p.grad_hx[(b0 + b) * H + j] = from_acc<S>(acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launch planning for the persistent kernels.

struct Plan {
  int BT = 1, G = 1, threads = 32, ldw = 1;
  int64_t blocks = 1;
  size_t smem = 0;
};

int pow2_ceil(int64_t x) {
  int p = 1;
  while (p < x && p < (1 << 30)) p <<= 1;
  return p;
}

// Largest batch tile per block that the automatic choice accepts: beyond it the batch is large
// enough for the per-step GEMM to use the GPU well.
constexpr int64_t kAutoMaxTile = 16;

bool make_plan(int64_t B, int64_t H, size_t acc_size, Path path, Plan* plan) {
  if (path == Path::Fallback || B <= 0 || H <= 0) return false;
  int device = 0, sms = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t ldw = H + 1;  // padded rows: lanes of different groups hit different banks
  const int64_t w_bytes = H * ldw * static_cast<int64_t>(acc_size);
  const int64_t entry_bytes = 2 * H * static_cast<int64_t>(acc_size);
  if (w_bytes + entry_bytes > smem_optin) return false;
  const int64_t max_tile = (smem_optin - w_bytes) / entry_bytes;
  const int64_t want_tile = (B + sms - 1) / std::max(sms, 1);
  if (path == Path::Auto && (want_tile > max_tile || want_tile > kAutoMaxTile)) return false;
  const int64_t tile = std::max<int64_t>(1, std::min(want_tile, max_tile));
  int G = std::min(32, pow2_ceil((H + 7) / 8));
  while (G > 1 && tile * H * G > 1024) G >>= 1;
  const int64_t threads = std::min<int64_t>(1024, std::max<int64_t>(32, (tile * H * G + 31) / 32 * 32));
  plan->BT = static_cast<int>(tile);
  plan->G = G;
  plan->threads = static_cast<int>(threads);
  plan->ldw = static_cast<int>(ldw);
  plan->blocks = (B + tile - 1) / tile;
  plan->smem = static_cast<size_t>(w_bytes + tile * entry_bytes);
  return true;
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
}

template <typename S>
bool persistent_forward_t(const Seq& seq, const void* w_hh, const void* hx, void* out, void* h_n,
                          bool relu, Path path, cudaStream_t stream) {
  Plan plan;
  if (!make_plan(seq.B, seq.H, sizeof(Acc<S>), path, &plan)) return false;
  FwdParams<S> p;
  p.T = seq.T;
  p.B = seq.B;
  p.H = static_cast<int>(seq.H);
  p.BT = plan.BT;
  p.G = plan.G;
  p.ldw = plan.ldw;
  p.meta = seq.meta;
  p.reverse = seq.reverse;
  p.relu = relu;
  p.w_hh = static_cast<const S*>(w_hh);
  p.hx = static_cast<const S*>(hx);
  p.out = static_cast<S*>(out);
  p.h_n = static_cast<S*>(h_n);
  allow_smem(persistent_forward_kernel<S>, plan.smem);
  persistent_forward_kernel<S>
      <<<static_cast<unsigned>(plan.blocks), plan.threads, plan.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <typename S>
bool persistent_backward_t(const Seq& seq, const void* w_hh, const void* grad_out,
                           const void* grad_h_n, const void* out, void* dpre, void* grad_hx,
                           bool relu, Path path, cudaStream_t stream) {
  Plan plan;
  if (!make_plan(seq.B, seq.H, sizeof(Acc<S>), path, &plan)) return false;
  BwdParams<S> p;
  p.T = seq.T;
  p.B = seq.B;
  p.H = static_cast<int>(seq.H);
  p.BT = plan.BT;
  p.G = plan.G;
  p.ldw = plan.ldw;
  p.meta = seq.meta;
  p.reverse = seq.reverse;
  p.relu = relu;
  p.w_hh = static_cast<const S*>(w_hh);
  p.grad_out = static_cast<const S*>(grad_out);
  p.grad_h_n = static_cast<const S*>(grad_h_n);
  p.out = static_cast<const S*>(out);
  p.dpre = static_cast<S*>(dpre);
  p.grad_hx = static_cast<S*>(grad_hx);
  allow_smem(persistent_backward_kernel<S>, plan.smem);
  persistent_backward_kernel<S>
      <<<static_cast<unsigned>(plan.blocks), plan.threads, plan.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// ---------------------------------------------------------------------------------------------
// Fallback pointwise kernels (one launch per step) and the h_prev gather.

constexpr int kPointwiseThreads = 256;

unsigned pointwise_blocks(int64_t count) {
  const int64_t blocks = (count + kPointwiseThreads - 1) / kPointwiseThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8)));
}

template <typename S>
__global__ void forward_step_kernel(S* __restrict__ cur, int64_t count, S* __restrict__ h_n,
                                    int64_t done_from, bool relu) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const S h = from_acc<S>(activate(to_acc(cur[i]), relu));
    cur[i] = h;
    if (h_n != nullptr && i >= done_from) h_n[i] = h;
  }
}

template <typename S>
__global__ void backward_step_kernel(S* __restrict__ dcur, const S* __restrict__ grad_out,
                                     const S* __restrict__ h, const S* __restrict__ grad_h_n,
                                     int64_t count, int64_t fed, int64_t final_from, bool relu) {
  using A = Acc<S>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A g = to_acc(grad_out[i]);
    if (i < fed) g += to_acc(dcur[i]);
    if (grad_h_n != nullptr && i >= final_from) g += to_acc(grad_h_n[i]);
    dcur[i] = from_acc<S>(activate_backward(g, to_acc(h[i]), relu));
  }
}

// grid.x = step, grid.y strides over the step's elements.
template <typename S>
__global__ void gather_prev_kernel(const int64_t* meta, int64_t T, int64_t B, int64_t H,
                                   bool reverse, const S* __restrict__ out,
                                   const S* __restrict__ hx, S* __restrict__ h_prev) {
  const int64_t t = blockIdx.x;
  const int64_t rows = step_rows(meta, B, t);
  const int64_t off = step_offset(meta, T, B, t);
  const int64_t p = reverse ? t + 1 : t - 1;
  const bool has_prev = p >= 0 && p < T;
  // Forward: every row of t continues from t-1; reverse: rows below batch_sizes[t+1] continue.
  const int64_t carried = !has_prev ? 0 : (reverse ? step_rows(meta, B, p) : rows);
  const int64_t prev_off = has_prev ? step_offset(meta, T, B, p) : 0;
  const int64_t count = rows * H;
  for (int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t r = i / H;
    S v;
    if (r < carried) {
      v = out[prev_off * H + i];
    } else if (hx != nullptr) {
      v = hx[i];
    } else {
      v = from_acc<S>(Acc<S>(0));
    }
    h_prev[off * H + i] = v;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points: dispatch on the dtype.

#define RNNEXT_DISPATCH(dtype, ...)                 \
  switch (dtype) {                                  \
    case DType::Float: {                            \
      using scalar_t = float;                       \
      __VA_ARGS__                                   \
    } break;                                        \
    case DType::Double: {                           \
      using scalar_t = double;                      \
      __VA_ARGS__                                   \
    } break;                                        \
    case DType::Half: {                             \
      using scalar_t = __half;                      \
      __VA_ARGS__                                   \
    } break;                                        \
    case DType::BFloat16: {                         \
      using scalar_t = __nv_bfloat16;               \
      __VA_ARGS__                                   \
    } break;                                        \
  }

bool persistent_forward(DType dtype, const Seq& seq, const void* w_hh, const void* hx, void* out,
                        void* h_n, bool relu, Path path, cudaStream_t stream) {
  bool ran = false;
  RNNEXT_DISPATCH(dtype, ran = persistent_forward_t<scalar_t>(seq, w_hh, hx, out, h_n, relu, path,
                                                              stream););
  return ran;
}

bool persistent_backward(DType dtype, const Seq& seq, const void* w_hh, const void* grad_out,
                         const void* grad_h_n, const void* out, void* dpre, void* grad_hx,
                         bool relu, Path path, cudaStream_t stream) {
  bool ran = false;
  RNNEXT_DISPATCH(dtype, ran = persistent_backward_t<scalar_t>(seq, w_hh, grad_out, grad_h_n, out,
                                                               dpre, grad_hx, relu, path, stream););
  return ran;
}

void forward_step_pointwise(DType dtype, void* cur, int64_t rows, int64_t H, void* h_n,
                            int64_t done_from, bool relu, cudaStream_t stream) {
  const int64_t count = rows * H;
  if (count <= 0) return;
  RNNEXT_DISPATCH(dtype, {
    forward_step_kernel<scalar_t><<<pointwise_blocks(count), kPointwiseThreads, 0, stream>>>(
        static_cast<scalar_t*>(cur), count, static_cast<scalar_t*>(h_n), done_from * H, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_step_pointwise(DType dtype, void* dcur, const void* grad_out, const void* h,
                             const void* grad_h_n, int64_t rows, int64_t H, int64_t fed,
                             int64_t final_from, bool relu, cudaStream_t stream) {
  const int64_t count = rows * H;
  if (count <= 0) return;
  RNNEXT_DISPATCH(dtype, {
    backward_step_kernel<scalar_t><<<pointwise_blocks(count), kPointwiseThreads, 0, stream>>>(
        static_cast<scalar_t*>(dcur), static_cast<const scalar_t*>(grad_out),
        static_cast<const scalar_t*>(h), static_cast<const scalar_t*>(grad_h_n), count, fed * H,
        final_from * H, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void gather_prev(DType dtype, const Seq& seq, const void* out, const void* hx, void* h_prev,
                 cudaStream_t stream) {
  if (seq.T <= 0 || seq.B <= 0 || seq.H <= 0) return;
  const int64_t per_step = seq.B * seq.H;
  const int64_t chunks = std::min<int64_t>(
      65535, std::max<int64_t>(1, (per_step + 4 * kPointwiseThreads - 1) / (4 * kPointwiseThreads)));
  const dim3 grid(static_cast<unsigned>(seq.T), static_cast<unsigned>(chunks));
  RNNEXT_DISPATCH(dtype, {
    gather_prev_kernel<scalar_t><<<grid, kPointwiseThreads, 0, stream>>>(
        seq.meta, seq.T, seq.B, seq.H, seq.reverse, static_cast<const scalar_t*>(out),
        static_cast<const scalar_t*>(hx), static_cast<scalar_t*>(h_prev));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace rnnext
