// The CPU planner: which implementation one rnn_forward / rnn_backward call takes, and why.
// Every size threshold of the CPU path lives here (plan.cpp), not in the glue or the core; the
// glue (rnn_cpu.cpp) only follows the plan. RNNEXT_CPU_PATH=<path name> in the environment (read
// at every call) forces one path, so the tests run each on purpose (tests/test_kernels_cpu.py);
// rnnext._C._cpu_plan(...) reports the plan of a shape to Python (the benchmark's rows).
#pragma once

#include <cstdint>

namespace rnnext {
namespace cpu {

// The paths. "Recurrent product" is the step's h W_hh^T (forward) or dpre W_hh (backward); "input
// product" is the forward's x W_ih^T + b_ih + b_hh, or the backward's grad_input = dpre W_ih.
enum class Path : int {
  // Recurrent product in the packed micro-kernel (kernels.h) with the activation (or its
  // derivative) fused; the input product of each step's rows in the micro-kernel too, right
  // before the recurrent product (rows hot in cache, one parallel region per call).
  kFused = 0,
  // Recurrent product in the micro-kernel; the input product as one GEMM over all rows (before
  // the recurrence in the forward, after it in the backward).
  kKernel = 1,
  // Recurrent product in BLAS per step (then the micro-kernel's epilogue alone), or, where
  // Plan::own_matvec, in the matrix-vector kernel (kernels.h, gemv_kernel); either way on W_hh
  // itself, unpacked. The input product as one GEMM over all rows.
  kBlas = 2,
  // Recurrent product in BLAS per step on the unpacked weights; the input product per step
  // (forward: micro-kernel; backward: BLAS on the unpacked W_ih). Packs nothing.
  kBlasFused = 3,
  // As kKernel, but the threads split each step's hidden columns (whole packed panels; every
  // thread all rows), with a barrier after each step: for a batch too small to split by rows, or
  // a W_hh too large for one core's L2 (each thread then keeps only its columns' panels hot).
  kColumns = 4,
};
constexpr int kNumPaths = 5;

// How the recurrence's work is split between threads.
enum class Split : int {
  kNone = 0,     // one thread
  kRows = 1,     // batch rows: each thread runs the whole time loop over its rows, no barrier
  kColumns = 2,  // hidden columns per step, a barrier after each step
};

const char* path_name(Path p);

// What the planner looks at: the call's sizes, its direction, and the machine.
struct Shape {
  int64_t T = 0, B = 0, N = 0, I = 0, H = 0;  // N = sum of batch sizes (T * B when padded)
  bool backward = false;                      // rnn_backward (else rnn_forward)
  bool want_input = true;                     // backward: grad_input wanted
  int elem_size = 4;                          // bytes per element (4: float32, 8: float64)
  int64_t threads = 1;                        // at::get_num_threads() of the call
};

struct Plan {
  Path path = Path::kFused;
  const char* reason = "";
  bool forced = false;  // chosen by RNNEXT_CPU_PATH
  // Recurrence split between threads (kRows: one slice of rows per thread, of equal work).
  Split split = Split::kNone;
  // The GEMMs over all rows (the input product when not per step, and the weight gradients) in
  // the micro-kernel instead of the BLAS: where the BLAS is not known to be good on this CPU (MKL
  // on a non-Intel CPU runs its AVX2 path: 35-42% of the FMA peak on the Zen 5 of NOTES.md section
  // 30, against 76-90% for the micro-kernel), except beside the AVX2 micro-kernel at float64 with
  // weights over 24 MB, where MKL's AVX2 path leads (kAvx2BlasGemmMinWeightBytes, plan.cpp).
  // RNNEXT_CPU_GEMM=own|blas overrides.
  bool own_gemm = false;
  // The weight gradients' GEMMs (C = dpre^T x and dpre^T h_prev, C [H, I] and [H, H]) in the
  // micro-kernel: wherever own_gemm is, and also beside a trusted BLAS where every C is small
  // and the micro-kernel is the AVX-512 one (kOwnWeightGemmMaxEntries, plan.cpp).
  // RNNEXT_CPU_GEMM=own|blas overrides this one too.
  bool own_weight_gemm = false;
  // Why own_gemm and own_weight_gemm are what they are.
  const char* gemm_reason = "";
  // kBlas forward with rnnext's kernels (not a trusted BLAS, RNNEXT_CPU_GEMM not blas) and one
  // row (under kOwnGemvMaxRows, plan.cpp): each step's recurrent product in the matrix-vector kernel on W_hh as it lies (no BLAS, no packing); with
  // two or more threads, the hidden columns split between them (Split::kColumns).
  bool own_matvec = false;

  bool blas_recurrence() const { return path == Path::kBlas || path == Path::kBlasFused; }
  bool input_per_step() const { return path == Path::kFused || path == Path::kBlasFused; }
};

// The path for this call: RNNEXT_CPU_PATH when set (an unknown name is an error), else the
// automatic choice. vector_kernel: the CPU has a vector micro-kernel (AVX2 or AVX-512).
Plan make_plan(const Shape& s, bool vector_kernel);

// Whether a bidirectional layer (on a call that may run off the calling thread: stack.cpp) of `rows`
// rows in all (T x B, or the packed rows), I inputs and H hidden features runs its two directions
// at once, one thread each, each direction single-threaded; else one after the other, each on
// every thread.
bool concurrent_directions(int64_t threads, int64_t rows, int64_t I, int64_t H);

}  // namespace cpu
}  // namespace rnnext
