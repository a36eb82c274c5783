// CUDA kernels of the Elman recurrence (see rnn_kernels.h for the contract, csrc/OPS.md for the math).
//
// Persistent kernels: one thread block per tile of batch entries runs every time step; batch tiles
// are independent, so no grid-wide barrier is needed. The tile's state lives in two shared buffers
// (read one, write the other: one barrier per step). Each output h_t[b, j] is a dot product of
// length H computed by a group of G lanes (G a power of two <= 32, inside one warp) and reduced with
// warp shuffles. Two variants:
//   registers (H <= 128): thread (j, lane) keeps its slice W_hh[j, lane + G*i] (i < KPT) in
//     registers for the whole sequence and computes column j for every entry of the tile, so each
//     step reads only the state from shared memory; the next step's projection is prefetched.
//   shared memory (larger H, while W_hh fits): W_hh is copied once into shared memory.
// The backward runs the same loops over the transpose of W_hh, in reverse time.
//
// Packed sequences: entries are sorted by length (batch sizes non-increasing), so at step t the
// active entries are b < batch_sizes[t]. Inactive entries keep their state unchanged. With the
// state initialised to hx (or 0) this gives every case of OPS.md at once: forward, an entry's state
// freezes after its last step (= its h_n); reverse, an entry starts from hx at its own last step.
// The backward's state (dpre of each entry's last processed step) freezes the same way, so after
// the loop it holds, for every entry, the dpre of the step that started from hx: grad_hx = state @ W.
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

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

// How the shared-memory kernels store W_hh: float16 / bfloat16 weights stay in their own dtype
// (exact, half the space: H up to ~330 fits), float32 / float64 in the accumulation type.
template <typename S>
using WStore = std::conditional_t<sizeof(S) == 2, S, Acc<S>>;

// Bytes of the W_hh region of the shared-memory kernels, rounded up so the state that follows it
// stays aligned.
__host__ __device__ __forceinline__ int64_t w_region_bytes(int64_t H, int64_t ldw, int64_t w_size) {
  return (H * ldw * w_size + 15) / 16 * 16;
}

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
template <typename A, typename W>
__device__ __forceinline__ A group_dot(const W* __restrict__ w, const A* __restrict__ h, int H,
                                       int lane, int G) {
  A acc0 = A(0), acc1 = A(0);
  int k = lane;
  for (; k + G < H; k += 2 * G) {
    acc0 += to_acc(w[k]) * h[k];
    acc1 += to_acc(w[k + G]) * h[k + G];
  }
  if (k < H) acc0 += to_acc(w[k]) * h[k];
  return group_sum(acc0 + acc1, G);
}

// ---------------------------------------------------------------------------------------------
// Persistent forward.

template <typename S>
struct FwdParams {
  int64_t T, B;
  int H, BT, G, ldw;
  int C = 1, R = 0;  // cluster variant: CTAs per cluster, rows of W_hh per CTA
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
  using W = WStore<S>;
  W* w = reinterpret_cast<W*>(smem_raw);  // [H, ldw]: w[j * ldw + k] = W_hh[j, k]
  A* state = reinterpret_cast<A*>(smem_raw + w_region_bytes(p.H, p.ldw, sizeof(W)));  // 2 x [BT, H]
  const int H = p.H;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int total = bt * H;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int G = p.G, lane = tid % G, group = tid / G, ngroups = nthreads / G;

  for (int64_t i = tid; i < static_cast<int64_t>(H) * H; i += nthreads) {
    const int64_t j = i / H, k = i % H;
    w[j * p.ldw + k] = static_cast<W>(p.w_hh[i]);
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
  int C = 1, R = 0;
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
  using W = WStore<S>;
  W* wt = reinterpret_cast<W*>(smem_raw);  // [H, ldw]: wt[j * ldw + k] = W_hh[k, j]
  A* state = reinterpret_cast<A*>(smem_raw + w_region_bytes(p.H, p.ldw, sizeof(W)));
  const int H = p.H;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int total = bt * H;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int G = p.G, lane = tid % G, group = tid / G, ngroups = nthreads / G;

  for (int64_t i = tid; i < static_cast<int64_t>(H) * H; i += nthreads) {
    const int64_t k = i / H, j = i % H;  // W_hh[k, j]
    wt[j * p.ldw + k] = static_cast<W>(p.w_hh[i]);
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
// Cluster variants (sm_90): W_hh too large for one SM's shared memory is split by rows over the C
// CTAs of a thread-block cluster; each CTA keeps the whole state of the tile and computes its R rows
// (outputs j in [rank*R, rank*R + R)), writing each new value into the state of every CTA of the
// cluster (distributed shared memory). One cluster barrier per step orders it all.

template <typename S>
__global__ void __launch_bounds__(1024) persistent_forward_cluster_kernel(const FwdParams<S> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  using A = Acc<S>;
  using W = WStore<S>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = p.H, R = p.R, C = p.C;
  const int rank = static_cast<int>(cluster.block_rank());
  const int j0 = rank * R;
  const int rl = max(0, min(R, H - j0));  // rows of W_hh held here
  W* w = reinterpret_cast<W*>(smem_raw);  // [R, ldw]: w[jl * ldw + k] = W_hh[j0 + jl, k]
  A* state = reinterpret_cast<A*>(smem_raw + w_region_bytes(R, p.ldw, sizeof(W)));  // 2 x [BT, H]
  const int64_t b0 = static_cast<int64_t>(blockIdx.x / C) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int total = bt * rl;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int G = p.G, lane = tid % G, group = tid / G, ngroups = nthreads / G;

  for (int64_t i = tid; i < static_cast<int64_t>(rl) * H; i += nthreads) {
    const int64_t jl = i / H, k = i % H;
    w[jl * p.ldw + k] = static_cast<W>(p.w_hh[(j0 + jl) * H + k]);
  }
  for (int i = tid; i < bt * H; i += nthreads) {
    state[i] = p.hx != nullptr ? to_acc(p.hx[b0 * H + i]) : A(0);
  }
  cluster.sync();  // every CTA runs and is initialised before any remote write

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
      const int b = valid ? o / rl : 0, jl = valid ? o % rl : 0, j = j0 + jl;
      const bool active = valid && b0 + b < rows;
      A pre = A(0);
      if (active && lane == 0) pre = to_acc(p.out[(off + b0 + b) * H + j]);
      const A acc = group_dot(w + static_cast<int64_t>(jl) * p.ldw, hc + b * H, H, lane, G);
      if (valid && lane == 0) {
        A v;
        if (active) {
          const S h = from_acc<S>(activate(acc + pre, p.relu));
          p.out[(off + b0 + b) * H + j] = h;
          v = to_acc(h);
        } else {
          v = hc[b * H + j];
        }
        for (int r = 0; r < C; ++r) cluster.map_shared_rank(hn, r)[b * H + j] = v;
      }
    }
    cluster.sync();
    cur ^= 1;
  }
  const A* hf = state + cur * p.BT * H;
  for (int i = tid; i < total; i += nthreads) {
    const int b = i / rl, j = j0 + i % rl;
    p.h_n[(b0 + b) * H + j] = from_acc<S>(hf[b * H + j]);
  }
#else
  __trap();  // never launched: the host checks the binary's architecture first
#endif
}

template <typename S>
__global__ void __launch_bounds__(1024) persistent_backward_cluster_kernel(const BwdParams<S> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  using A = Acc<S>;
  using W = WStore<S>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = p.H, R = p.R, C = p.C;
  const int rank = static_cast<int>(cluster.block_rank());
  const int j0 = rank * R;
  const int rl = max(0, min(R, H - j0));
  W* wt = reinterpret_cast<W*>(smem_raw);  // [R, ldw]: wt[jl * ldw + k] = W_hh[k, j0 + jl]
  A* state = reinterpret_cast<A*>(smem_raw + w_region_bytes(R, p.ldw, sizeof(W)));
  const int64_t b0 = static_cast<int64_t>(blockIdx.x / C) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int total = bt * rl;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int G = p.G, lane = tid % G, group = tid / G, ngroups = nthreads / G;

  for (int64_t i = tid; i < static_cast<int64_t>(rl) * H; i += nthreads) {
    const int64_t jl = i / H, k = i % H;
    wt[jl * p.ldw + k] = static_cast<W>(p.w_hh[k * H + j0 + jl]);
  }
  for (int i = tid; i < 2 * p.BT * H; i += nthreads) state[i] = A(0);
  cluster.sync();

  int cur = 0;
  int64_t prev_rows = 0;
  for (int64_t s = 0; s < p.T; ++s) {
    const int64_t t = p.reverse ? s : p.T - 1 - s;
    const int64_t rows = step_rows(p.meta, p.B, t);
    const int64_t off = step_offset(p.meta, p.T, p.B, t);
    const A* dc = state + cur * p.BT * H;
    A* dn = state + (cur ^ 1) * p.BT * H;
    for (int base = 0; base < total; base += ngroups) {
      const int o = base + group;
      const bool valid = o < total;
      const int b = valid ? o / rl : 0, jl = valid ? o % rl : 0, j = j0 + jl;
      const int64_t e = b0 + b;
      const bool active = valid && e < rows;
      const int64_t idx = (off + e) * H + j;
      A g = A(0), h = A(0);
      if (active && lane == 0) {
        g = to_acc(p.grad_out[idx]);
        if (p.grad_h_n != nullptr && e >= prev_rows) g += to_acc(p.grad_h_n[e * H + j]);
        h = to_acc(p.out[idx]);
      }
      const A acc = group_dot(wt + static_cast<int64_t>(jl) * p.ldw, dc + b * H, H, lane, G);
      if (valid && lane == 0) {
        A v;
        if (active) {
          v = activate_backward(g + acc, h, p.relu);
          p.dpre[idx] = from_acc<S>(v);
        } else {
          v = dc[b * H + j];
        }
        for (int r = 0; r < C; ++r) cluster.map_shared_rank(dn, r)[b * H + j] = v;
      }
    }
    cluster.sync();
    cur ^= 1;
    prev_rows = rows;
  }
  if (p.grad_hx != nullptr) {
    const A* dc = state + cur * p.BT * H;
    for (int base = 0; base < total; base += ngroups) {
      const int o = base + group;
      const bool valid = o < total;
      const int b = valid ? o / rl : 0, jl = valid ? o % rl : 0;
      const A acc = group_dot(wt + static_cast<int64_t>(jl) * p.ldw, dc + b * H, H, lane, G);
      if (valid && lane == 0) p.grad_hx[(b0 + b) * H + j0 + jl] = from_acc<S>(acc);
    }
  }
#else
  __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// Register-resident variants. Thread (j, lane): j = tid / G, lane = tid % G. The state rows have
// stride HS = G * KPT >= H with zero padding, so the dot products need no bounds checks.

constexpr int kRegMaxTile = 8;  // batch entries per block (register arrays of prefetched values)

template <typename A, int KPT>
__device__ __forceinline__ A reg_dot(const A (&w)[KPT], const A* __restrict__ h, int G) {
  A acc0 = A(0), acc1 = A(0);
#pragma unroll
  for (int i = 0; i < KPT; i += 2) {
    acc0 += w[i] * h[G * i];
    if (i + 1 < KPT) acc1 += w[i + 1] * h[G * (i + 1)];
  }
  return acc0 + acc1;
}

template <typename S, int KPT>
__global__ void __launch_bounds__(1024) persistent_forward_regs_kernel(const FwdParams<S> p) {
  using A = Acc<S>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* state = reinterpret_cast<A*>(smem_raw);  // 2 buffers of [BT, HS]
  const int H = p.H, HS = p.ldw, G = p.G;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lane = tid % G, j = tid / G;
  const bool jv = j < H;
  const int buf = p.BT * HS;

  A w[KPT];
#pragma unroll
  for (int i = 0; i < KPT; ++i) {
    const int k = lane + G * i;
    w[i] = (jv && k < H) ? to_acc(p.w_hh[static_cast<int64_t>(j) * H + k]) : A(0);
  }
  for (int i = tid; i < 2 * buf; i += nthreads) {
    const int r = i % buf, b = r / HS, k = r % HS;
    A v = A(0);
    if (i < buf && b < bt && k < H && p.hx != nullptr) v = to_acc(p.hx[(b0 + b) * H + k]);
    state[i] = v;
  }

  // Projection of the first step (only lane 0 of a group uses it).
  const bool loader = lane == 0 && jv;
  int64_t t = p.reverse ? p.T - 1 : 0;
  int64_t rows = step_rows(p.meta, p.B, t), off = step_offset(p.meta, p.T, p.B, t);
  A pre[kRegMaxTile];
#pragma unroll
  for (int b = 0; b < kRegMaxTile; ++b) {
    pre[b] = (loader && b < bt && b0 + b < rows) ? to_acc(p.out[(off + b0 + b) * H + j]) : A(0);
  }
  __syncthreads();

  int cur = 0;
  for (int64_t s = 0; s < p.T; ++s) {
    // Prefetch the next step's projection; it arrives while this step computes.
    int64_t rows_n = 0, off_n = 0;
    if (s + 1 < p.T) {
      const int64_t tn = p.reverse ? p.T - 2 - s : s + 1;
      rows_n = step_rows(p.meta, p.B, tn);
      off_n = step_offset(p.meta, p.T, p.B, tn);
    }
    A nxt[kRegMaxTile];
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) {
      nxt[b] = (loader && b < bt && b0 + b < rows_n) ? to_acc(p.out[(off_n + b0 + b) * H + j]) : A(0);
    }
    const A* hc = state + cur * buf;
    A* hn = state + (cur ^ 1) * buf;
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) {
      if (b < bt) {  // uniform over the block: every lane reaches the shuffles
        const A acc = group_sum(reg_dot<A, KPT>(w, hc + b * HS + lane, G), G);
        if (loader) {
          if (b0 + b < rows) {
            const S h = from_acc<S>(activate(acc + pre[b], p.relu));
            p.out[(off + b0 + b) * H + j] = h;
            hn[b * HS + j] = to_acc(h);  // the state is rounded to the storage dtype each step
          } else {
            hn[b * HS + j] = hc[b * HS + j];
          }
        }
      }
    }
    __syncthreads();
    cur ^= 1;
    rows = rows_n;
    off = off_n;
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) pre[b] = nxt[b];
  }
  const A* hf = state + cur * buf;
  for (int i = tid; i < bt * H; i += nthreads) p.h_n[b0 * H + i] = from_acc<S>(hf[(i / H) * HS + i % H]);
}

template <typename S, int KPT>
__global__ void __launch_bounds__(1024) persistent_backward_regs_kernel(const BwdParams<S> p) {
  using A = Acc<S>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* state = reinterpret_cast<A*>(smem_raw);  // 2 buffers of [BT, HS]
  const int H = p.H, HS = p.ldw, G = p.G;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * p.BT;
  const int bt = static_cast<int>(min(static_cast<int64_t>(p.BT), p.B - b0));
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lane = tid % G, j = tid / G;
  const bool jv = j < H;
  const int buf = p.BT * HS;

  A w[KPT];  // column j of W_hh: w[i] = W_hh[lane + G*i, j]
#pragma unroll
  for (int i = 0; i < KPT; ++i) {
    const int k = lane + G * i;
    w[i] = (jv && k < H) ? to_acc(p.w_hh[static_cast<int64_t>(k) * H + j]) : A(0);
  }
  for (int i = tid; i < 2 * buf; i += nthreads) state[i] = A(0);

  const bool loader = lane == 0 && jv;
  // g[b]: grad_output (+ grad_h_n where the entry is first processed); h[b]: the forward's h_t.
  A g[kRegMaxTile], h[kRegMaxTile];
  int64_t t = p.reverse ? 0 : p.T - 1;
  int64_t rows = step_rows(p.meta, p.B, t), off = step_offset(p.meta, p.T, p.B, t);
  int64_t prev_rows = 0;
#pragma unroll
  for (int b = 0; b < kRegMaxTile; ++b) {
    g[b] = h[b] = A(0);
    const int64_t e = b0 + b;
    if (loader && b < bt && e < rows) {
      const int64_t idx = (off + e) * H + j;
      g[b] = to_acc(p.grad_out[idx]);
      if (p.grad_h_n != nullptr && e >= prev_rows) g[b] += to_acc(p.grad_h_n[e * H + j]);
      h[b] = to_acc(p.out[idx]);
    }
  }
  __syncthreads();

  int cur = 0;
  for (int64_t s = 0; s < p.T; ++s) {
    int64_t rows_n = 0, off_n = 0;
    if (s + 1 < p.T) {
      const int64_t tn = p.reverse ? s + 1 : p.T - 2 - s;
      rows_n = step_rows(p.meta, p.B, tn);
      off_n = step_offset(p.meta, p.T, p.B, tn);
    }
    A gn[kRegMaxTile], hnx[kRegMaxTile];
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) {
      gn[b] = hnx[b] = A(0);
      const int64_t e = b0 + b;
      if (loader && b < bt && e < rows_n) {
        const int64_t idx = (off_n + e) * H + j;
        gn[b] = to_acc(p.grad_out[idx]);
        if (p.grad_h_n != nullptr && e >= rows) gn[b] += to_acc(p.grad_h_n[e * H + j]);
        hnx[b] = to_acc(p.out[idx]);
      }
    }
    const A* dc = state + cur * buf;
    A* dn = state + (cur ^ 1) * buf;
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) {
      if (b < bt) {
        const A acc = group_sum(reg_dot<A, KPT>(w, dc + b * HS + lane, G), G);
        if (loader) {
          const int64_t e = b0 + b;
          if (e < rows) {
            const A d = activate_backward(g[b] + acc, h[b], p.relu);
            p.dpre[(off + e) * H + j] = from_acc<S>(d);
            dn[b * HS + j] = d;
          } else {
            dn[b * HS + j] = dc[b * HS + j];
          }
        }
      }
    }
    __syncthreads();
    cur ^= 1;
    rows = rows_n;
    off = off_n;
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) {
      g[b] = gn[b];
      h[b] = hnx[b];
    }
  }
  if (p.grad_hx != nullptr) {
    const A* dc = state + cur * buf;
#pragma unroll
    for (int b = 0; b < kRegMaxTile; ++b) {
      if (b < bt) {
        const A acc = group_sum(reg_dot<A, KPT>(w, dc + b * HS + lane, G), G);
        if (loader) p.grad_hx[(b0 + b) * H + j] = from_acc<S>(acc);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launch planning for the persistent kernels.

enum class Variant { None, Regs, Smem, Cluster };

struct Plan {
  Variant variant = Variant::None;
  int BT = 1, G = 1, KPT = 0, threads = 32, ldw = 1, C = 1, R = 0;
  int64_t blocks = 1;
  size_t smem = 0;
};

int64_t pow2_ceil(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}
int64_t pow2_floor(int64_t x) {
  int64_t p = 1;
  while (p * 2 <= x) p <<= 1;
  return p;
}

// Largest batch tile per block that the automatic choice accepts for the shared-memory variants:
// beyond it the batch is large enough for the per-step GEMM to use the GPU well.
constexpr int64_t kAutoMaxTile = 16;
// Hidden sizes up to this use the register variant (KPT <= 16 values of W_hh per thread).
constexpr int64_t kRegMaxHidden = 128;

struct Device {
  int sms = 1, smem_optin = 0, major = 0;
};

Device device_info() {
  Device d;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
  d.sms = std::max(d.sms, 1);
  return d;
}

// Shared-memory variant with R rows of W_hh per CTA and C CTAs per cluster (C = 1, R = H: one CTA
// holds all of W_hh). W_hh rows are padded to ldw = G (mod 32), so that the lanes of the groups of
// one warp (consecutive rows, consecutive k within a group) fall in distinct banks; the tile is
// sized with the largest padding (ldw <= H + 31), then G and ldw are fixed.
bool plan_smem(int64_t B, int64_t H, int64_t R, int C, int64_t acc, int64_t w_size, const Device& d,
               bool auto_choice, Plan* plan) {
  const int64_t want_tile = std::max<int64_t>(1, (B * C + d.sms - 1) / d.sms);
  const int64_t w_bytes_max = w_region_bytes(R, H + 31, w_size);
  const int64_t entry_bytes = 2 * H * acc;
  if (w_bytes_max + entry_bytes > d.smem_optin) return false;
  const int64_t max_tile = (d.smem_optin - w_bytes_max) / entry_bytes;
  if (auto_choice && (want_tile > max_tile || want_tile > kAutoMaxTile)) return false;
  const int64_t tile = std::min(want_tile, max_tile);
  int64_t G = std::min<int64_t>(32, pow2_ceil((H + 7) / 8));
  while (G > 1 && tile * R * G > 1024) G >>= 1;
  const int64_t ldw = G >= 32 ? (H + 31) / 32 * 32 : (std::max<int64_t>(H - G, 0) + 31) / 32 * 32 + G;
  plan->variant = C > 1 ? Variant::Cluster : Variant::Smem;
  plan->BT = static_cast<int>(tile);
  plan->G = static_cast<int>(G);
  plan->ldw = static_cast<int>(ldw);
  plan->C = C;
  plan->R = static_cast<int>(R);
  plan->threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (tile * R * G + 31) / 32 * 32)));
  plan->blocks = C * ((B + tile - 1) / tile);
  plan->smem = static_cast<size_t>(w_region_bytes(R, ldw, w_size) + tile * entry_bytes);
  return true;
}

// Per-device caches of the cluster queries, so that a call captured into a CUDA graph after a
// warm-up makes no query at all.
std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

bool cluster_kernel_ok(const void* kernel) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::map<std::pair<int, const void*>, bool> cache;
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto it = cache.find({device, kernel});
    if (it != cache.end()) return it->second;
  }
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  // ptxVersion: the virtual architecture the code was compiled for (a compute_80 PTX JIT-compiled
  // on an sm_90 device reports binaryVersion 90 but holds the __trap() body).
  const bool ok = attr.binaryVersion >= 90 && attr.ptxVersion >= 90;
  std::lock_guard<std::mutex> lock(cache_mutex());
  cache[{device, kernel}] = ok;
  return ok;
}

// cluster_kernel: the cluster variant to use if W_hh does not fit one SM; it is used only if the
// device and the kernel's compiled binary support thread-block clusters (sm_90+).
Plan make_plan(int64_t B, int64_t H, size_t acc_size, size_t w_size, Path path,
               const void* cluster_kernel) {
  Plan plan;
  if (path == Path::Fallback || B <= 0 || H <= 0) return plan;
  const Device d = device_info();
  const int64_t acc = static_cast<int64_t>(acc_size), ws = static_cast<int64_t>(w_size);
  const bool auto_choice = path == Path::Auto;
  const int64_t want_tile = std::max<int64_t>(1, (B + d.sms - 1) / d.sms);

  // Registers: G lanes per output so that H * G <= 1024 threads, about 8 values of W_hh per lane.
  // Not for float64: its register arrays would spill (64 registers per thread at 1024 threads).
  if ((path == Path::Auto || path == Path::Persistent) && acc == 4 && H <= kRegMaxHidden &&
      want_tile <= kRegMaxTile) {
    const int64_t G = std::min<int64_t>(std::min<int64_t>(32, pow2_ceil((H + 7) / 8)), pow2_floor(1024 / H));
    const int64_t kpt = (H + G - 1) / G;
    const int KPT = kpt <= 8 ? 8 : 16;
    const int64_t HS = G * KPT;
    const int64_t smem = 2 * want_tile * HS * acc;
    if (kpt <= 16 && smem <= d.smem_optin) {
      plan.variant = Variant::Regs;
      plan.BT = static_cast<int>(want_tile);
      plan.G = static_cast<int>(G);
      plan.KPT = KPT;
      plan.ldw = static_cast<int>(HS);
      plan.threads = static_cast<int>((H * G + 31) / 32 * 32);
      plan.blocks = (B + want_tile - 1) / want_tile;
      plan.smem = static_cast<size_t>(smem);
      return plan;
    }
  }
  if (path != Path::PersistentCluster && plan_smem(B, H, H, 1, acc, ws, d, auto_choice, &plan)) {
    return plan;
  }
  if (path != Path::PersistentSmem && d.major >= 9 && cluster_kernel_ok(cluster_kernel)) {
    for (int C : {2, 4, 8}) {
      if (plan_smem(B, H, (H + C - 1) / C, C, acc, ws, d, auto_choice, &plan)) return plan;
    }
  }
  return Plan{};
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
}

template <typename Kernel, typename Params>
void launch(Kernel kernel, const Plan& plan, const Params& p, cudaStream_t stream) {
  allow_smem(kernel, plan.smem);
  kernel<<<static_cast<unsigned>(plan.blocks), plan.threads, plan.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Launches a cluster kernel; false (nothing launched) when the clusters cannot be scheduled.
template <typename Params>
bool launch_cluster(void (*kernel)(Params), const Plan& plan, const Params& p, cudaStream_t stream) {
  allow_smem(kernel, plan.smem);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(plan.blocks));
  cfg.blockDim = dim3(static_cast<unsigned>(plan.threads));
  cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(plan.C);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::map<std::tuple<int, const void*, int, int, size_t>, int> cache;
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), plan.C, plan.threads,
                                   plan.smem);
  int clusters = -1;
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto it = cache.find(key);
    if (it != cache.end()) clusters = it->second;
  }
  if (clusters < 0) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
    std::lock_guard<std::mutex> lock(cache_mutex());
    cache[key] = clusters;
  }
  if (clusters < 1) return false;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <typename S>
bool persistent_forward_t(const Seq& seq, const void* w_hh, const void* hx, void* out, void* h_n,
                          bool relu, Path path, cudaStream_t stream) {
  const Plan plan = make_plan(seq.B, seq.H, sizeof(Acc<S>), sizeof(WStore<S>), path,
                              reinterpret_cast<const void*>(persistent_forward_cluster_kernel<S>));
  if (plan.variant == Variant::None) return false;
  FwdParams<S> p;
  p.C = plan.C;
  p.R = plan.R;
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
  if constexpr (!std::is_same_v<S, double>) {
    if (plan.variant == Variant::Regs) {
      if (plan.KPT == 8) {
        launch(persistent_forward_regs_kernel<S, 8>, plan, p, stream);
      } else {
        launch(persistent_forward_regs_kernel<S, 16>, plan, p, stream);
      }
      return true;
    }
  }
  if (plan.variant == Variant::Cluster) return launch_cluster(persistent_forward_cluster_kernel<S>, plan, p, stream);
  launch(persistent_forward_kernel<S>, plan, p, stream);
  return true;
}

template <typename S>
bool persistent_backward_t(const Seq& seq, const void* w_hh, const void* grad_out,
                           const void* grad_h_n, const void* out, void* dpre, void* grad_hx,
                           bool relu, Path path, cudaStream_t stream) {
  const Plan plan = make_plan(seq.B, seq.H, sizeof(Acc<S>), sizeof(WStore<S>), path,
                              reinterpret_cast<const void*>(persistent_backward_cluster_kernel<S>));
  if (plan.variant == Variant::None) return false;
  BwdParams<S> p;
  p.C = plan.C;
  p.R = plan.R;
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
  if constexpr (!std::is_same_v<S, double>) {
    if (plan.variant == Variant::Regs) {
      if (plan.KPT == 8) {
        launch(persistent_backward_regs_kernel<S, 8>, plan, p, stream);
      } else {
        launch(persistent_backward_regs_kernel<S, 16>, plan, p, stream);
      }
      return true;
    }
  }
  if (plan.variant == Variant::Cluster) return launch_cluster(persistent_backward_cluster_kernel<S>, plan, p, stream);
  launch(persistent_backward_kernel<S>, plan, p, stream);
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

namespace {

const char* variant_name(const Plan& plan) {
  switch (plan.variant) {
    case Variant::Regs: return "persistent-regs";
    case Variant::Smem: return "persistent-smem";
    case Variant::Cluster:
      return plan.C == 2 ? "persistent-cluster2" : plan.C == 4 ? "persistent-cluster4" : "persistent-cluster8";
    default: return "fallback";
  }
}

template <typename S>
const char* plan_name_t(int64_t B, int64_t H, Path path, bool backward) {
  const void* cluster = backward ? reinterpret_cast<const void*>(persistent_backward_cluster_kernel<S>)
                                 : reinterpret_cast<const void*>(persistent_forward_cluster_kernel<S>);
  return variant_name(make_plan(B, H, sizeof(Acc<S>), sizeof(WStore<S>), path, cluster));
}

}  // namespace

const char* plan_name(DType dtype, int64_t B, int64_t H, Path path, bool backward) {
  const char* name = "fallback";
  RNNEXT_DISPATCH(dtype, name = plan_name_t<scalar_t>(B, H, path, backward););
  return name;
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
