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
#include <cstdio>
#include <cstdlib>
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
// Tiled variant (issue 14; RNNEXT_CUDA_PATH=tiled only, never run on a GPU yet). Grid = batch tiles
// x hidden splits: the C CTAs of a cluster (C = 1 without clusters) share one tile of BT batch
// entries (BT a multiple of kTNB); CTA `rank` owns the R rows j in [rank*R, rank*R + R) of W_hh
// (of W_hh^T in the backward), resident in its shared memory for the whole sequence, and keeps the
// whole state of the tile [BT, HP] (HP = H rounded up to 4, zero padded) in two buffers.
//
// Register blocking: thread (kl, jg, bg) = (tid % KS, (tid / KS) % (R/kTNJ), tid / KS / (R/kTNJ))
// computes the kTNB x kTNJ outputs (rows bg*kTNB + r, columns jg*kTNJ + c) over the k chunks
// kl, kl + KS, ... of four elements (16-byte loads of the state and of W), then reduces over its KS
// lanes with shuffles. Epilogue: lane kl owns the rows r with r % KS == kl (spread over the lanes,
// not lane 0 only); for each it writes h (dpre) to global memory and the kTNJ new state values as
// one vector to the next buffer of every CTA of the cluster (distributed shared memory).
//
// Exchange without a cluster barrier: buffer i of each CTA has an mbarrier full[i] expecting C
// arrivals per phase. Step s reads buffer s & 1 and writes buffer (s + 1) & 1 of every CTA; after
// its stores a CTA runs __syncthreads, then thread r < C arrives (release, cluster scope) on
// full[(s + 1) & 1] of CTA r. Step s >= 1 first waits (acquire, cluster scope) for full[s & 1] to
// complete its phase ((s - 1) >> 1) & 1. Why a writer never overwrites what a reader still reads:
// CTA P writes buffer (s + 1) & 1 of CTA X at step s only after its wait of step s, which needs
// X's arrival of step s - 1, issued after X's __syncthreads of step s - 1, i.e. after X finished
// reading that buffer (step s - 1 read it). The same argument shows that no arrival for a phase
// comes before the previous phase of that barrier completed and was waited for by every thread.
// tests/test_cuda.py::test_algorithm_tiled_* runs this protocol and this index arithmetic on the CPU
// under random interleavings of the CTAs and checks both against the CPU op.
//
// C = 1 (and every GPU without clusters) uses the same code with __syncthreads in place of the
// mbarriers. Backward: the same loop over W_hh^T in reverse time; after it, grad_hx = state @ W_hh
// by one more pass of the same product.

constexpr int kTNB = 4;             // batch rows per thread
constexpr int kTNJ = 4;             // hidden columns per thread (one 16-byte vector of float)
constexpr int kTiledThreads = 512;  // at most: 128 registers per thread

template <typename S>
struct TiledParams {
  int64_t T, B;
  int H, HP, R, ldw, BT, C, KS;
  const int64_t* meta;
  bool reverse, relu;
  const S* w_hh;      // [H, H]
  const S* hx;        // forward: [B, H] or nullptr
  S* out;             // forward: [N, H], projection in, h_t out; backward: the forward's output
  S* h_n;             // forward: [B, H]
  const S* grad_out;  // backward: [N, H]
  const S* grad_h_n;  // backward: [B, H] or nullptr
  S* dpre;            // backward: [N, H]
  S* grad_hx;         // backward: [B, H] or nullptr
};

__host__ __device__ __forceinline__ int64_t tiled_w_bytes(int64_t R, int64_t ldw, int64_t acc) {
  return (R * ldw * acc + 15) / 16 * 16;
}
__host__ __device__ __forceinline__ int64_t tiled_smem_bytes(int64_t R, int64_t ldw, int64_t BT,
                                                             int64_t HP, int64_t acc) {
  return tiled_w_bytes(R, ldw, acc) + 2 * BT * HP * acc + 16;  // + two mbarriers
}

// Four consecutive values, 16-byte aligned: one 128-bit access for float, two for double.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 x = reinterpret_cast<const double2*>(p)[0], y = reinterpret_cast<const double2*>(p)[1];
  v[0] = x.x, v[1] = x.y, v[2] = y.x, v[3] = y.y;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4]) {
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// Arrive (release, cluster scope) on the mbarrier at the same offset in CTA `rank`'s shared memory.
__device__ __forceinline__ void mbar_arrive_remote(uint64_t* bar, uint32_t rank) {
  asm volatile(
      "{\n\t.reg .b32 ra;\n\t"
      "mapa.shared::cluster.u32 ra, %0, %1;\n\t"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n\t}" ::"r"(smem_addr(bar)),
      "r"(rank)
      : "memory");
}
// Wait (acquire, cluster scope) until the phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "TILED_WAIT:\n\t"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%0], %1;\n\t"
      "@!p bra TILED_WAIT;\n\t}" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
#endif

// acc[r][c] = sum_k w[(jl0 + c) * ldw + k] * h[(br0 + r) * HP + k], reduced over the KS lanes.
// Every lane of the warp must call it (shuffles).
template <typename A>
__device__ __forceinline__ void tiled_product(const A* __restrict__ w, const A* __restrict__ h, int ldw,
                                              int HP, int jl0, int br0, int kl, int KS,
                                              A (&acc)[kTNB][kTNJ]) {
#pragma unroll
  for (int r = 0; r < kTNB; ++r) {
#pragma unroll
    for (int c = 0; c < kTNJ; ++c) acc[r][c] = A(0);
  }
  for (int k4 = kl; k4 < HP / 4; k4 += KS) {
    A hv[kTNB][4];
#pragma unroll
    for (int r = 0; r < kTNB; ++r) load4(h + (br0 + r) * HP + 4 * k4, hv[r]);
#pragma unroll
    for (int c = 0; c < kTNJ; ++c) {
      A wv[4];
      load4(w + (jl0 + c) * ldw + 4 * k4, wv);
#pragma unroll
      for (int r = 0; r < kTNB; ++r) {
        acc[r][c] += wv[0] * hv[r][0];
        acc[r][c] += wv[1] * hv[r][1];
        acc[r][c] += wv[2] * hv[r][2];
        acc[r][c] += wv[3] * hv[r][3];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kTNB; ++r) {
#pragma unroll
    for (int c = 0; c < kTNJ; ++c) acc[r][c] = group_sum(acc[r][c], KS);
  }
}

template <typename S, bool BWD, bool CLUSTER>
__global__ void __launch_bounds__(kTiledThreads) tiled_kernel(const TiledParams<S> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if constexpr (CLUSTER) {
    __trap();  // never launched: the host checks the binary's architecture first
    return;
  } else
#endif
  {
    using A = Acc<S>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int H = p.H, HP = p.HP, R = p.R, C = CLUSTER ? p.C : 1, KS = p.KS, BT = p.BT;
    int rank = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (CLUSTER) rank = static_cast<int>(cooperative_groups::this_cluster().block_rank());
#endif
    const int j0 = rank * R;
    const int64_t b0 = static_cast<int64_t>(blockIdx.x / C) * BT;
    const int bt = static_cast<int>(min(static_cast<int64_t>(BT), p.B - b0));
    A* w = reinterpret_cast<A*>(smem_raw);  // [R, ldw]
    A* state = reinterpret_cast<A*>(smem_raw + tiled_w_bytes(R, p.ldw, sizeof(A)));  // 2 x [BT, HP]
    uint64_t* full = reinterpret_cast<uint64_t*>(state + 2 * BT * HP);               // 2 mbarriers
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int jgroups = R / kTNJ, bgroups = BT / kTNB;
    const int kl = tid % KS, q = tid / KS;
    const bool worker = q < jgroups * bgroups;  // threads past the last group only shuffle
    const int jl0 = worker ? (q % jgroups) * kTNJ : 0, br0 = worker ? (q / jgroups) * kTNB : 0;
    (void)full;

    for (int i = tid; i < R * HP; i += nthreads) {
      const int jl = i / HP, k = i % HP, j = j0 + jl;
      A v = A(0);
      if (j < H && k < H) v = to_acc(BWD ? p.w_hh[static_cast<int64_t>(k) * H + j] : p.w_hh[static_cast<int64_t>(j) * H + k]);
      w[jl * p.ldw + k] = v;
    }
    for (int i = tid; i < 2 * BT * HP; i += nthreads) {
      const int b = (i / HP) % BT, k = i % HP;
      A v = A(0);
      if (!BWD && i < BT * HP && b < bt && k < H && p.hx != nullptr) v = to_acc(p.hx[(b0 + b) * H + k]);
      state[i] = v;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (CLUSTER) {
      if (tid == 0) {
        mbar_init(&full[0], static_cast<uint32_t>(C));
        mbar_init(&full[1], static_cast<uint32_t>(C));
        mbar_init_fence();
      }
      cooperative_groups::this_cluster().sync();  // every CTA initialised before any remote access
    } else
#endif
    {
      __syncthreads();
    }

    // Per-thread inputs of one step for its owned rows: forward the projection (a); backward
    // grad_output (+ grad_h_n where the entry is processed first) (a) and the forward's h (h).
    auto fetch = [&](int64_t rows, int64_t off, int64_t prev_rows, A (&a)[kTNB][kTNJ],
                     A (&h)[kTNB][kTNJ]) {
#pragma unroll
      for (int r = 0; r < kTNB; ++r) {
        const int64_t e = b0 + br0 + r;
        const bool own = worker && r % KS == kl && br0 + r < bt && e < rows;
#pragma unroll
        for (int c = 0; c < kTNJ; ++c) {
          const int j = j0 + jl0 + c;
          a[r][c] = h[r][c] = A(0);
          if (own && j < H) {
            const int64_t idx = (off + e) * H + j;
            if constexpr (BWD) {
              a[r][c] = to_acc(p.grad_out[idx]);
              if (p.grad_h_n != nullptr && e >= prev_rows) a[r][c] += to_acc(p.grad_h_n[e * H + j]);
              h[r][c] = to_acc(p.out[idx]);
            } else {
              a[r][c] = to_acc(p.out[idx]);
            }
          }
        }
      }
    };

    int64_t prev_rows = 0;  // batch size of the previously processed step (0 before the first)
    for (int64_t s = 0; s < p.T; ++s) {
      const int cur = static_cast<int>(s & 1);
      const int64_t t = BWD != p.reverse ? p.T - 1 - s : s;  // backward: reverse of the forward
      const int64_t rows = step_rows(p.meta, p.B, t), off = step_offset(p.meta, p.T, p.B, t);
      // This step's inputs, issued before the wait and the product so that their latency hides
      // behind them (one set of registers: a prefetch one step ahead spilled in the backward).
      A a[kTNB][kTNJ], hf[kTNB][kTNJ];
      fetch(rows, off, prev_rows, a, hf);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      if constexpr (CLUSTER) {
        if (s > 0) mbar_wait(&full[cur], static_cast<uint32_t>(((s - 1) >> 1) & 1));
      }
#endif
      const A* hc = state + cur * BT * HP;
      A* hnext = state + (cur ^ 1) * BT * HP;
      A acc[kTNB][kTNJ];
      tiled_product(w, hc, p.ldw, HP, jl0, br0, kl, KS, acc);
#pragma unroll
      for (int r = 0; r < kTNB; ++r) {
        const int b = br0 + r;
        if (!worker || r % KS != kl || b >= bt) continue;
        const int64_t e = b0 + b;
        A v[kTNJ];
#pragma unroll
        for (int c = 0; c < kTNJ; ++c) {
          const int j = j0 + jl0 + c;
          v[c] = A(0);
          if (j >= H) continue;
          if (e < rows) {
            const int64_t idx = (off + e) * H + j;
            if constexpr (BWD) {
              v[c] = activate_backward(a[r][c] + acc[r][c], hf[r][c], p.relu);
              p.dpre[idx] = from_acc<S>(v[c]);
            } else {
              const S h = from_acc<S>(activate(acc[r][c] + a[r][c], p.relu));
              p.out[idx] = h;
              v[c] = to_acc(h);  // the state is rounded to the storage dtype each step
            }
          } else {
            v[c] = hc[b * HP + j];  // inactive entry: its state stays
          }
        }
        A* dst = hnext + b * HP + j0 + jl0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if constexpr (CLUSTER) {
          cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
          for (int pr = 0; pr < C; ++pr) store4(cluster.map_shared_rank(dst, pr), v);
        } else
#endif
        {
          store4(dst, v);
        }
      }
      __syncthreads();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      if constexpr (CLUSTER) {
        if (tid < C) mbar_arrive_remote(&full[cur ^ 1], static_cast<uint32_t>(tid));
      }
#endif
      prev_rows = rows;
    }
    const int fin = static_cast<int>(p.T & 1);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (CLUSTER) mbar_wait(&full[fin], static_cast<uint32_t>(((p.T - 1) >> 1) & 1));
#endif
    const A* hfin = state + fin * BT * HP;
    if constexpr (BWD) {
      if (p.grad_hx != nullptr) {
        // Each entry's state is now the dpre of the step at which it started from hx.
        A acc[kTNB][kTNJ];
        tiled_product(w, hfin, p.ldw, HP, jl0, br0, kl, KS, acc);
#pragma unroll
        for (int r = 0; r < kTNB; ++r) {
          const int b = br0 + r;
          if (!worker || r % KS != kl || b >= bt) continue;
#pragma unroll
          for (int c = 0; c < kTNJ; ++c) {
            const int j = j0 + jl0 + c;
            if (j < H) p.grad_hx[(b0 + b) * H + j] = from_acc<S>(acc[r][c]);
          }
        }
      }
    } else {
      for (int i = tid; i < bt * R; i += nthreads) {
        const int b = i / R, j = j0 + i % R;
        if (j < H) p.h_n[(b0 + b) * H + j] = from_acc<S>(hfin[b * HP + j]);
      }
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (CLUSTER) {
      cooperative_groups::this_cluster().sync();  // no CTA leaves while a peer may access it
    }
#endif
  }
}

// ---------------------------------------------------------------------------------------------
// Launch planning for the persistent kernels.

enum class Variant { None, Regs, Smem, Cluster, Tiled };

struct Plan {
  Variant variant = Variant::None;
  int BT = 1, G = 1, KPT = 0, threads = 32, ldw = 1, C = 1, R = 0;
  int HP = 0, KS = 1;  // tiled variant: padded state row, lanes per dot product
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

// The device attributes the planner needs, queried once per device and cached: a call makes no
// runtime query (issue 14: four queries per call were part of the ~0.1 ms fixed cost). Thread-safe:
// one std::call_once per device index.
constexpr int kMaxDevices = 64;

const Device& device_info(int device) {
  static Device devices[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  TORCH_INTERNAL_ASSERT(device >= 0 && device < kMaxDevices, "rnnext: CUDA device index ", device,
                        " out of range");
  std::call_once(once[device], [device] {
    Device& d = devices[device];
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(
        cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
    d.sms = std::max(d.sms, 1);
  });
  return devices[device];
}

// The device of a call: the glue passes it (Seq::device); otherwise (plan_name) the current one.
int resolve_device(int device) {
  if (device >= 0) return device;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  return device;
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

bool cluster_kernel_ok(int device, const void* kernel) {
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

// The tiled variant's plan (Path::Tiled only; a first guess, untuned: nothing of it has run).
// C: the smallest cluster size in 1, 2, 4, 8 whose R = ceil(H / C) rows of W_hh (rounded up to 4)
// fit one SM next to a tile of kTNB entries, then doubled while the grid still fits the SMs and R
// stays >= 16 (a small batch spreads its hidden columns over more SMs). BT: the batch spread over
// the clusters that fit the SMs, rounded up to kTNB, capped by the threads (kTiledThreads) and the
// shared memory. KS: the most lanes per dot product (4, 2, 1) within kTiledThreads (the override
// also takes 8: lanes 4-7 then own no rows in the epilogue). C > 1 needs
// sm_90 and a cluster kernel compiled for it (cluster_ok). RNNEXT_CUDA_TILE="C,BT,KS" (read per
// plan, for the sweep in scripts/gpu_check.sh) sets them; a setting that does not fit gives no plan.
bool plan_tiled(int64_t B, int64_t H, int64_t acc, const Device& d, bool cluster_ok, Plan* plan) {
  // R rows per CTA (a multiple of kTNJ); the state row HP = C * R >= H covers every CTA's columns
  // (zero padded); W rows are padded by one 16-byte vector (bank spread).
  auto rows_of = [&](int64_t C) { return ((H + C - 1) / C + 3) / 4 * 4; };
  auto hp_of = [&](int64_t C) { return C * rows_of(C); };
  auto fits = [&](int64_t C, int64_t BT) {
    return tiled_smem_bytes(rows_of(C), hp_of(C) + 4, BT, hp_of(C), acc) <= d.smem_optin &&
           (rows_of(C) / kTNJ) * (BT / kTNB) <= kTiledThreads;
  };
  int64_t C = 0, BT = 0, KS = 0;
  if (const char* env = std::getenv("RNNEXT_CUDA_TILE")) {
    long long c = 0, bt = 0, ks = 0;
    if (std::sscanf(env, "%lld,%lld,%lld", &c, &bt, &ks) != 3) return false;
    C = c, BT = bt, KS = ks;
    if ((C != 1 && C != 2 && C != 4 && C != 8) || (C > 1 && !cluster_ok) || BT < kTNB ||
        BT % kTNB != 0 || (KS != 1 && KS != 2 && KS != 4 && KS != 8) || !fits(C, BT) ||
        KS * (rows_of(C) / kTNJ) * (BT / kTNB) > kTiledThreads) {
      return false;
    }
  } else {
    for (int64_t c : {1, 2, 4, 8}) {
      if (c > 1 && !cluster_ok) break;
      if (fits(c, kTNB)) {
        C = c;
        break;
      }
    }
    if (C == 0) return false;
    auto tile_for = [&](int64_t c) {
      const int64_t clusters = std::max<int64_t>(1, d.sms / c);
      int64_t bt = ((B + clusters - 1) / clusters + kTNB - 1) / kTNB * kTNB;
      while (bt > kTNB && !fits(c, bt)) bt -= kTNB;
      return bt;
    };
    BT = tile_for(C);
    while (cluster_ok && C < 8 && rows_of(2 * C) >= 16 && fits(2 * C, kTNB) &&
           2 * C * ((B + tile_for(2 * C) - 1) / tile_for(2 * C)) <= d.sms) {
      C *= 2;
      BT = tile_for(C);
    }
    KS = 4;
    while (KS > 1 && KS * (rows_of(C) / kTNJ) * (BT / kTNB) > kTiledThreads) KS /= 2;
  }
  plan->variant = Variant::Tiled;
  plan->C = static_cast<int>(C);
  plan->R = static_cast<int>(rows_of(C));
  plan->BT = static_cast<int>(BT);
  plan->KS = static_cast<int>(KS);
  plan->HP = static_cast<int>(hp_of(C));
  plan->ldw = plan->HP + 4;
  plan->threads = static_cast<int>((KS * (plan->R / kTNJ) * (BT / kTNB) + 31) / 32 * 32);
  plan->blocks = C * ((B + BT - 1) / BT);
  plan->smem = static_cast<size_t>(tiled_smem_bytes(plan->R, plan->ldw, BT, plan->HP, acc));
  return true;
}

// cluster_kernel: the cluster variant to use if W_hh does not fit one SM; it is used only if the
// device and the kernel's compiled binary support thread-block clusters (sm_90+).
Plan make_plan(int device, int64_t B, int64_t H, size_t acc_size, size_t w_size, Path path,
               const void* cluster_kernel, const void* tiled_cluster_kernel) {
  Plan plan;
  if (path == Path::Fallback || B <= 0 || H <= 0) return plan;
  const Device& d = device_info(device);
  const int64_t acc = static_cast<int64_t>(acc_size), ws = static_cast<int64_t>(w_size);
  const bool auto_choice = path == Path::Auto;
  if (path == Path::Tiled) {
    if (!plan_tiled(B, H, acc, d, d.major >= 9 && cluster_kernel_ok(device, tiled_cluster_kernel),
                    &plan)) {
      return Plan{};
    }
    return plan;
  }
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
  if (path != Path::PersistentSmem && d.major >= 9 && cluster_kernel_ok(device, cluster_kernel)) {
    for (int C : {2, 4, 8}) {
      if (plan_smem(B, H, (H + C - 1) / C, C, acc, ws, d, auto_choice, &plan)) return plan;
    }
  }
  return Plan{};
}

// cudaFuncSetAttribute once per (kernel, device) and size: the largest dynamic shared memory
// allowed so far is cached, so a launch makes no runtime call for it after the first of its size.
void allow_smem(int device, const void* kernel, size_t smem) {
  if (smem <= 48 * 1024) return;
  static std::map<std::pair<int, const void*>, size_t> allowed;
  std::lock_guard<std::mutex> lock(cache_mutex());
  size_t& have = allowed[{device, kernel}];
  if (have >= smem) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  have = smem;
}

template <typename Params>
void launch(int device, void (*kernel)(Params), const Plan& plan, const Params& p,
            cudaStream_t stream) {
  allow_smem(device, reinterpret_cast<const void*>(kernel), plan.smem);
  kernel<<<static_cast<unsigned>(plan.blocks), plan.threads, plan.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Launches a cluster kernel; false (nothing launched) when the clusters cannot be scheduled.
template <typename Params>
bool launch_cluster(int device, void (*kernel)(Params), const Plan& plan, const Params& p,
                    cudaStream_t stream) {
  allow_smem(device, reinterpret_cast<const void*>(kernel), plan.smem);
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
void fill_tiled(const Plan& plan, const Seq& seq, bool relu, const S* w_hh, TiledParams<S>* p) {
  p->T = seq.T;
  p->B = seq.B;
  p->H = static_cast<int>(seq.H);
  p->HP = plan.HP;
  p->R = plan.R;
  p->ldw = plan.ldw;
  p->BT = plan.BT;
  p->C = plan.C;
  p->KS = plan.KS;
  p->meta = seq.meta;
  p->reverse = seq.reverse;
  p->relu = relu;
  p->w_hh = w_hh;
}

// C = 1: the plain launch of the kernel without cluster code; else the cluster launch (false when
// its clusters cannot be scheduled).
template <typename S>
bool launch_tiled(int device, const Plan& plan, const TiledParams<S>& p,
                  void (*cluster_kernel)(TiledParams<S>), void (*plain_kernel)(TiledParams<S>),
                  cudaStream_t stream) {
  if (plan.C > 1) return launch_cluster(device, cluster_kernel, plan, p, stream);
  launch(device, plain_kernel, plan, p, stream);
  return true;
}

template <typename S>
bool persistent_forward_t(const Seq& seq, const void* w_hh, const void* hx, void* out, void* h_n,
                          bool relu, Path path, cudaStream_t stream) {
  const int device = resolve_device(seq.device);
  const Plan plan = make_plan(device, seq.B, seq.H, sizeof(Acc<S>), sizeof(WStore<S>), path,
                              reinterpret_cast<const void*>(persistent_forward_cluster_kernel<S>),
                              reinterpret_cast<const void*>(tiled_kernel<S, false, true>));
  if (plan.variant == Variant::None) return false;
  if (plan.variant == Variant::Tiled) {
    TiledParams<S> p = {};
    fill_tiled(plan, seq, relu, static_cast<const S*>(w_hh), &p);
    p.hx = static_cast<const S*>(hx);
    p.out = static_cast<S*>(out);
    p.h_n = static_cast<S*>(h_n);
    return launch_tiled(device, plan, p, tiled_kernel<S, false, true>, tiled_kernel<S, false, false>, stream);
  }
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
        launch(device, persistent_forward_regs_kernel<S, 8>, plan, p, stream);
      } else {
        launch(device, persistent_forward_regs_kernel<S, 16>, plan, p, stream);
      }
      return true;
    }
  }
  if (plan.variant == Variant::Cluster) {
    return launch_cluster(device, persistent_forward_cluster_kernel<S>, plan, p, stream);
  }
  launch(device, persistent_forward_kernel<S>, plan, p, stream);
  return true;
}

template <typename S>
bool persistent_backward_t(const Seq& seq, const void* w_hh, const void* grad_out,
                           const void* grad_h_n, const void* out, void* dpre, void* grad_hx,
                           bool relu, Path path, cudaStream_t stream) {
  const int device = resolve_device(seq.device);
  const Plan plan = make_plan(device, seq.B, seq.H, sizeof(Acc<S>), sizeof(WStore<S>), path,
                              reinterpret_cast<const void*>(persistent_backward_cluster_kernel<S>),
                              reinterpret_cast<const void*>(tiled_kernel<S, true, true>));
  if (plan.variant == Variant::None) return false;
  if (plan.variant == Variant::Tiled) {
    TiledParams<S> p = {};
    fill_tiled(plan, seq, relu, static_cast<const S*>(w_hh), &p);
    p.grad_out = static_cast<const S*>(grad_out);
    p.grad_h_n = static_cast<const S*>(grad_h_n);
    p.out = const_cast<S*>(static_cast<const S*>(out));  // read only in the backward
    p.dpre = static_cast<S*>(dpre);
    p.grad_hx = static_cast<S*>(grad_hx);
    return launch_tiled(device, plan, p, tiled_kernel<S, true, true>, tiled_kernel<S, true, false>, stream);
  }
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
        launch(device, persistent_backward_regs_kernel<S, 8>, plan, p, stream);
      } else {
        launch(device, persistent_backward_regs_kernel<S, 16>, plan, p, stream);
      }
      return true;
    }
  }
  if (plan.variant == Variant::Cluster) {
    return launch_cluster(device, persistent_backward_cluster_kernel<S>, plan, p, stream);
  }
  launch(device, persistent_backward_kernel<S>, plan, p, stream);
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
    case Variant::Tiled:
      return plan.C == 1 ? "tiled" : plan.C == 2 ? "tiled-cluster2" : plan.C == 4 ? "tiled-cluster4" : "tiled-cluster8";
    default: return "fallback";
  }
}

template <typename S>
const char* plan_name_t(int64_t B, int64_t H, Path path, bool backward) {
  const void* cluster = backward ? reinterpret_cast<const void*>(persistent_backward_cluster_kernel<S>)
                                 : reinterpret_cast<const void*>(persistent_forward_cluster_kernel<S>);
  const void* tiled = backward ? reinterpret_cast<const void*>(tiled_kernel<S, true, true>)
                               : reinterpret_cast<const void*>(tiled_kernel<S, false, true>);
  return variant_name(
      make_plan(resolve_device(-1), B, H, sizeof(Acc<S>), sizeof(WStore<S>), path, cluster, tiled));
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
