// Framework-free CUDA core of the Elman recurrence: raw device pointers, sizes and a stream.
// No ATen here, so the .cu translation unit compiles quickly; the glue (rnn_cuda.cpp) checks
// arguments, allocates, runs the large GEMMs through ATen and the per-step GEMMs through cuBLAS.
//
// Row layout (as on the CPU): step t's rows start at offset(t); row offset(t) + b is batch entry b.
// Padded input is the packed case with every batch size = B, so offset(t) = t * B.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace rnnext {
namespace cuda {

enum class DType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// Sequence geometry as the kernels see it.
struct Seq {
  int64_t T = 0;  // steps
  int64_t B = 0;  // batch (batch_sizes[0] when packed)
  int64_t H = 0;  // hidden size
  // nullptr: padded (B rows each step). Otherwise a device int64 array of 2T+1 entries:
  // batch_sizes[0..T) followed by offsets[0..T] (offsets[T] = N).
  const int64_t* meta = nullptr;
  bool reverse = false;
  int device = -1;  // CUDA device index of the call (-1: the current device, one runtime query)
};

// Which recurrence implementation to use (the glue reads RNNEXT_CUDA_PATH for tests):
// Auto: the persistent kernel that fits, if the batch is not too large for it, else the fallback;
// Persistent: a persistent kernel whenever one fits (registers first, then shared memory);
// PersistentSmem: only the single-CTA shared-memory persistent kernel; PersistentCluster: only the
// thread-block-cluster kernel (sm_90); Fallback: the per-step GEMM path; Tiled: the register-blocked
// batch-tile x hidden-split kernel of issue 14 (never run on a GPU yet; only when asked for).
enum class Path : int {
  Auto = 0,
  Persistent = 1,
  Fallback = 2,
  PersistentSmem = 3,
  PersistentCluster = 4,
  Tiled = 5
};

// Persistent kernels: one launch runs every step, with W_hh held on chip across steps (in
// registers for hidden sizes up to 128, else in shared memory, split over the CTAs of a cluster
// on sm_90 when one SM's shared memory is too small) and the state of a tile of batch entries in
// shared memory. They return false, launching nothing, when no variant fits (or, for
// Path::Auto, when the per-step GEMM path is expected to be faster); the caller then runs the
// per-step fallback.
//
// Forward: `out` [N, H] holds x W_ih^T + biases on entry and every h_t on return; h_n [B, H].
// hx [B, H] contiguous or nullptr (zeros); w_hh [H, H] contiguous.
bool persistent_forward(DType dtype, const Seq& seq, const void* w_hh, const void* hx, void* out,
                        void* h_n, bool relu, Path path, cudaStream_t stream);

// Backward: dpre [N, H] receives dL/d(pre-activation) for every row; grad_hx [B, H] (or nullptr)
// receives dL/dhx. grad_out [N, H] and out [N, H] contiguous; grad_h_n [B, H] or nullptr (zero).
bool persistent_backward(DType dtype, const Seq& seq, const void* w_hh, const void* grad_out,
                         const void* grad_h_n, const void* out, void* dpre, void* grad_hx,
                         bool relu, Path path, cudaStream_t stream);

// The recurrence path persistent_forward / persistent_backward take for this geometry on the current
// device (the planner's choice, make_plan): "persistent-regs", "persistent-smem",
// "persistent-cluster<C>", "tiled", "tiled-cluster<C>" or "fallback" (the per-step GEMM path). A cluster plan whose clusters
// cannot be scheduled at launch still falls back then; the name is the plan's.
const char* plan_name(DType dtype, int64_t B, int64_t H, Path path, bool backward);

// Fallback, one step: cur [rows, H] holds the full pre-activation; applies the activation in place
// (rounding to the storage dtype) and copies rows >= done_from to h_n (same row index).
void forward_step_pointwise(DType dtype, void* cur, int64_t rows, int64_t H, void* h_n,
                            int64_t done_from, bool relu, cudaStream_t stream);

// Fallback, one step of the backward: for each row r < rows,
//   g = (r < fed ? dcur[r] : 0) + grad_out[r] + (grad_h_n && r >= final_from ? grad_h_n[r] : 0)
//   dcur[r] = g * act'(h[r])
void backward_step_pointwise(DType dtype, void* dcur, const void* grad_out, const void* h,
                             const void* grad_h_n, int64_t rows, int64_t H, int64_t fed,
                             int64_t final_from, bool relu, cudaStream_t stream);

// h_prev [N, H]: for every row, the state it started from (the previous step's row, else hx or 0).
void gather_prev(DType dtype, const Seq& seq, const void* out, const void* hx, void* h_prev,
                 cudaStream_t stream);

}  // namespace cuda
}  // namespace rnnext
