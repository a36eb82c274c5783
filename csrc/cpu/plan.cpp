// The CPU planner (plan.h): every threshold of the CPU path, with the measurement behind it.
#include "plan.h"

#include "kernels.h"

#include <c10/util/Exception.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace rnnext {
namespace cpu {
namespace {

constexpr const char* kNames[kNumPaths] = {"fused", "kernel", "blas", "blas-fused", "columns"};

// A whole input product below this many multiply-adds runs per step inside the recurrence
// whatever the path (at::add + addmm cost ~20 us at the tutorial shape; NOTES.md section 3).
constexpr int64_t kSmallProjection = int64_t{1} << 18;
// The per-step input product needs this many rows a step (on average, for packed input): with
// fewer, each step reuses every packed W_ih^T row for too few rows, and one GEMM over all steps
// was faster at every shape measured (B = 1 to 4, H = 20 to 256; NOTES.md section 16).
constexpr int64_t kFusedMinRows = 8;
// ...and packed W_ih^T and W_hh^T together within a core's L2 (sysconf), and at most 1 MB (512 KB
// when the system does not say): both are read at every step, and must stay in L2 with the step's
// rows. At I = H = 512 (2 MB) the fused projection ran at 141 GFLOP/s against 161 for one GEMM
// before the recurrence (Sapphire Rapids, 2 MB of L2, 1 thread, CPU time; NOTES.md section 21); at
// I = H = 256 (512 KB) both ran at 150. At I = 512, H = 256 (768 KB; an Intel VM with 2 MB of L2,
// section 52) fused 310 against 282 forward, 262 against 248 training (2 threads), 155 against
// 148 (1). With 1 MB of L2 (AMD EPYC Zen 4, 2 threads, section 81) fused still led at 768 KB (the
// 2-layer bidirectional stack's second layer, float32: 83-88% of the peak against 77-84%
// forward, 72-78% against 66-78% training) and at 1 MB (I = H = 256 float64 forward: 79-86%
// against 70-75%; training level), where half the L2 had sent both to one projection GEMM.
int64_t fused_max_weight_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? std::min(static_cast<int64_t>(l2), int64_t{1} << 20) : int64_t{512} << 10;
  }();
  return bytes;
}
// Few steps (an RNNCell call): packing the weights (a transposing copy, ~0.5 ns an entry, every
// call) costs more than the micro-kernel saves over BLAS in so few steps. Forward: T <= 4 won at
// H 64 to 256; backward (its packing is a plain copy, and its fused grad_input beats BLAS on small
// rows): T <= 2 with B H (H + I) >= 2^20 multiply-adds a step (section 14). Tiny weights
// (H < 32) pack in ~1 us and the micro-kernel wins.
constexpr int64_t kFewMinHidden = 32;
constexpr int64_t kFewStepsForward = 4;
constexpr int64_t kFewStepsBackward = 2;
constexpr int64_t kFewBackwardStepWork = int64_t{1} << 20;
// Below this many multiply-adds in the recurrence (~10 us on one core), one thread: a parallel
// region costs a few us, and splitting saves at most half the work (section 5).
constexpr int64_t kMinParallelWork = int64_t{1} << 19;
// Hidden columns are split between threads (a barrier per step) when the batch gives fewer than
// this many rows per thread, or when packed W_hh is larger than this (then each thread keeps only
// its half hot); and only with at least one 256-byte panel per thread and this many multiply-adds
// a step (a barrier costs ~1 us; ~2 us of work at one core's rate).
constexpr int64_t kColumnsMaxRowsPerThread = 4;
constexpr int64_t kColumnsMinWeightBytes = int64_t{1} << 20;
constexpr int64_t kColumnsMinStepWork = int64_t{1} << 18;
// Matrix-vector steps: with under this many rows a step and packed W_hh over kGemvMinWeightBytes,
// the micro-kernel's register block (1-3 rows) gets few FMAs from each load of W_hh, which every
// step streams from L2 / L3, and packing W_hh^T (a transposing copy, every call) costs a large
// share of a short call. Forward, B = 1-3, H = 512 and 1024, float32 and float64, 1 and 2
// threads, MKL on an Intel CPU: BLAS steps 0.62-0.91x the micro-kernel's time (NOTES.md section
// 28). Elsewhere (MKL's per-step product on AMD was 1.2-3x slower than the micro-kernel) the
// steps of one row run in rnnext's matrix-vector kernel on W_hh as it lies (Plan::own_matvec),
// which reads W_hh as fast as the packed kernel reads its packing (H = 512-2048, float32 and
// float64, AMD EPYC Zen 4) and packs nothing. It takes one row at a time: a version with 2-3 rows
// of h in a block (against 4-8 rows of W_hh, all H entries apart: 4 KB at H = 1024 float32, the
// same L1 sets) ran 1.1-2.2x slower a step than the packed kernel (NOTES.md section 81), so 2 and
// 3 rows keep the packed kernel. Both bounds: under this many rows.
constexpr int64_t kGemvMaxRows = 4;
constexpr int64_t kOwnGemvMaxRows = 2;
constexpr int64_t kGemvMinWeightBytes = int64_t{512} << 10;
// The weight gradients run in the micro-kernel beside a trusted BLAS (MKL on an Intel CPU) when
// both their Cs have at most this many entries. A C = A^T B over k = 3200-6400 rows, 2 threads,
// Xeon VM, against MKL (NOTES.md section 62): 128 x 128 +9%, 256 x 256 +6% (float64 +8%, +5%),
// 512 x 512 -2% (float64 -3%), 1024 x 1024 -13%. And only with at least kOwnWeightGemmMinWork
// multiply-adds in the larger: below, MKL's small-matrix path is ahead (the tutorial's shape,
// k = 30: training 70 -> 76 us with the micro-kernel). Only with the AVX-512 micro-kernel: the AVX2
// one (RNNEXT_CPU_ISA=avx2 on the same Xeon) against MKL's AVX-512 path made medium training
// 154 -> 127 GFLOP/s.
constexpr int64_t kOwnWeightGemmMaxEntries = int64_t{1} << 17;
constexpr int64_t kOwnWeightGemmMinWork = int64_t{1} << 19;
// Whole BLAS steps: a float64 forward whose W_hh is over this many bytes (far past the cores' L2, so
// every step streams it from L3, at half float32's multiply-adds a byte) runs each step's
// recurrent product as one BLAS call on all the threads (MKL's), the recurrence itself on the
// calling thread. T=20, 2 threads, against the micro-kernel's column split (NOTES.md section 63):
// float64 B=64 H=2048 (32 MB) 158-169 vs 177-184 ms (torch.nn.RNN 167-173), B=32 H=2048 90 vs 97;
// the column split stays ahead below: float64 H=1536 (18 MB) 90 vs 86 ms, B=128 H=1024 216 vs 202;
// and for float32 at any size measured: H=2048 (16 MB) 82-84 vs 76-81, H=2560 (26 MB) 126-129 vs
// 118. Measured with MKL on an Intel CPU only (trust_blas).
constexpr int64_t kWholeBlasStepMinWeightBytes = int64_t{24} << 20;
// The GEMMs over all rows (projection, grad_input, weight gradients) in MKL beside the AVX2
// micro-kernel (a CPU without AVX-512 whose BLAS is MKL but not trusted, i.e. not an Intel: MKL runs
// its AVX2 path there, as wide as the kernel) for float64 where the weights' C, H x max(I, H), is
// over this many bytes. AVX2 kernels on an AMD EPYC Zen 4 (RNNEXT_CPU_ISA=avx2; its two 256-bit FMA
// units give AVX2 code the AVX-512 peak), 2 threads, rnnext's / MKL's GEMMs toggled in one process,
// GFLOP/s (NOTES.md section 97): T = 20, I = H = 2048 (32 MB) training B = 64 80.5 / 86.8, B = 16
// 61.1 / 76.3 (torch.nn.RNN 62 and 29), inference level (81.0 / 78.7); I = H = 1024 (8 MB) level
// (inference 78.6 / 76.3, training 81.0 / 78.2), I = 2048, H = 512 and I = H = 768 level, I = H =
// 512 rnnext's ahead (inference 80 / 75, training 81 / 72); float32 level at H = 1024 and 2048.
constexpr int64_t kAvx2BlasGemmMinWeightBytes = int64_t{24} << 20;

Plan automatic(const Shape& s, bool vector_kernel) {
  Plan p;
  const int64_t projection = s.N * s.I * s.H;
  const bool tiny_projection = projection <= kSmallProjection;
  const bool many_rows = s.N >= kFusedMinRows * s.T;
  const bool fits = (s.I + s.H) * s.H * s.elem_size <= fused_max_weight_bytes();
  if (!s.backward) {
    if (s.H >= kFewMinHidden && s.T <= kFewStepsForward) {
      p.path = Path::kBlas;
      p.reason = "few steps (T <= 4, H >= 32): BLAS on the unpacked weights, no packing";
    } else if (!vector_kernel) {
      const bool fuse = many_rows && tiny_projection;
      p.path = fuse ? Path::kBlasFused : Path::kBlas;
      p.reason = fuse ? "no vector micro-kernel: BLAS steps; tiny projection per step"
                      : "no vector micro-kernel: BLAS steps and one projection GEMM";
    } else if (many_rows && (tiny_projection || fits)) {
      p.path = Path::kFused;
      p.reason = "micro-kernel steps with each step's projection fused (>= 8 rows a step, "
                 "W_ih and W_hh within a core's L2 and 1 MB)";
    } else {
      p.path = Path::kKernel;
      p.reason = many_rows
                     ? "micro-kernel steps; W_ih and W_hh over a core's L2 or 1 MB: one "
                       "projection GEMM"
                     : "micro-kernel steps; < 8 rows a step: one projection GEMM";
    }
  } else {
    const bool few = s.H >= kFewMinHidden && s.T <= kFewStepsBackward &&
                     s.N / s.T * s.H * (s.H + s.I) >= kFewBackwardStepWork;
    if (few) {
      p.path = Path::kBlasFused;
      p.reason = "few large steps (T <= 2): BLAS on the unpacked weights, grad_input per step";
    } else if (!vector_kernel) {
      const bool fuse = s.want_input && tiny_projection;
      p.path = fuse ? Path::kBlasFused : Path::kBlas;
      p.reason = "no vector micro-kernel: BLAS steps";
    } else if (tiny_projection || fits) {
      p.path = Path::kFused;
      p.reason = "micro-kernel steps with grad_input fused per step (W_ih and W_hh within a core's "
                 "L2 and 1 MB)";
    } else {
      p.path = Path::kKernel;
      p.reason = "micro-kernel steps; W_ih and W_hh over a core's L2 or 1 MB: grad_input as one "
                 "GEMM";
    }
  }
  return p;
}

// The BLAS is trusted for the large GEMMs when it is MKL on an Intel CPU (its AVX-512 path: on this
// session's Sapphire Rapids MKL beat the micro-kernel on the input projection by 6-16%, NOTES.md
// section 25); elsewhere (MKL's AVX2 path on AMD, or an unknown BLAS) the micro-kernel runs them.
bool mkl_present() {
  static const bool mkl = dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local") != nullptr;
  return mkl;
}

bool trust_blas() {
  static const bool trusted = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return mkl_present() && __builtin_cpu_is("intel");
#else
    return mkl_present();
#endif
  }();
  return trusted;
}

}  // namespace

const char* path_name(Path p) { return kNames[static_cast<int>(p)]; }

// Exactly two threads and a direction of at least kMinParallelWork: one core per direction runs
// with nothing shared and no split of rows, where the row split's two threads share the call's
// packing and slices. Inference, 2 threads, float32, interleaved with the directions one after the
// other (NOTES.md section 37): T=100 B=32 I=128 H=256 2 layers 20.6 -> 16.0 ms, T=50 B=8 I=H=256
// 2.62 -> 2.32 ms; T=10 B=3 I=100 H=20 (tutorial-2l-bidir, under the threshold) 24 -> 31 us.
// With more threads the directions would each get half the team: not measured (2-core machines).
bool concurrent_directions(int64_t threads, int64_t rows, int64_t I, int64_t H) {
  return threads == 2 && rows * H * (I + H) >= kMinParallelWork;  // one direction's multiply-adds
}

Plan make_plan(const Shape& s, bool vector_kernel) {
  Plan p;
  const char* want = std::getenv("RNNEXT_CPU_PATH");
  if (want != nullptr && *want != '\0' && std::strcmp(want, "auto") != 0) {
    int found = -1;
    for (int i = 0; i < kNumPaths; ++i) {
      if (std::strcmp(want, kNames[i]) == 0) found = i;
    }
    TORCH_CHECK(found >= 0, "rnnext: RNNEXT_CPU_PATH=", want,
                " is not a CPU path; expected auto, fused, kernel, blas, blas-fused or columns");
    p.path = static_cast<Path>(found);
    p.reason = "forced by RNNEXT_CPU_PATH";
    p.forced = true;
  } else {
    p = automatic(s, vector_kernel);
    const int64_t panel = kPanelBytes / s.elem_size;
    const bool wide = s.H * s.H * s.elem_size > kColumnsMinWeightBytes;
    const bool narrow = s.B < kColumnsMaxRowsPerThread * s.threads;
    if (vector_kernel && s.threads >= 2 && (wide || narrow) && s.H >= panel * s.threads &&
        s.B * s.H * s.H >= kColumnsMinStepWork && s.T > kFewStepsForward) {
      p.path = Path::kColumns;
      p.reason = wide ? "micro-kernel steps, hidden columns split between threads (W_hh over 1 MB); "
                        "one GEMM for the input product"
                      : "micro-kernel steps, hidden columns split between threads (batch under 4 "
                        "rows a thread); one GEMM for the input product";
    }
  }
  // The two forward rules that take the steps off the packed micro-kernel: matrix-vector steps
  // (in a trusted BLAS, MKL on an Intel CPU, or else in rnnext's matrix-vector kernel), and whole
  // BLAS steps (a trusted BLAS only).
  const bool steps_may_move = !p.forced && !s.backward && vector_kernel && s.T > kFewStepsForward;
  const bool blas_steps_may_lead = steps_may_move && trust_blas();
  const int64_t w_hh_bytes = s.H * s.H * s.elem_size;
  const int64_t matvec_rows = trust_blas() ? kGemvMaxRows : kOwnGemvMaxRows;
  // (Its reason is given below, once own_matvec says which kernel takes the steps.)
  const bool matvec = steps_may_move && s.B < matvec_rows && w_hh_bytes > kGemvMinWeightBytes;
  if (matvec) p.path = Path::kBlas;
  const bool whole_blas_steps = blas_steps_may_lead && s.B >= kGemvMaxRows &&
                                s.elem_size == 8 && w_hh_bytes > kWholeBlasStepMinWeightBytes;
  if (whole_blas_steps) {
    p.path = Path::kBlas;
    p.reason = "float64 W_hh over 24 MB: each step's product one BLAS call on every thread "
               "(streams W_hh from L3 faster than the column split)";
  }
  const int64_t c_entries = s.H * std::max(s.I, s.H);
  const bool avx512 = std::strcmp(step_kernel_isa(), "avx512") == 0;  // as wide as MKL's path
  const bool avx2_blas_gemm = vector_kernel && !avx512 && mkl_present() && s.elem_size == 8 &&
                              c_entries * s.elem_size > kAvx2BlasGemmMinWeightBytes;
  // rnnext's kernels for what a trusted BLAS would run; the GEMMs over all rows also leave them
  // for MKL's AVX2 path at float64's largest weights (the matrix-vector steps do not).
  bool own = vector_kernel && !trust_blas();
  p.own_gemm = own && !avx2_blas_gemm;
  p.own_weight_gemm = p.own_gemm || (avx512 && c_entries <= kOwnWeightGemmMaxEntries &&
                                     s.N * c_entries >= kOwnWeightGemmMinWork);
  p.gemm_reason = !vector_kernel   ? "no vector kernels on this CPU"
                  : trust_blas()   ? "the BLAS is MKL on an Intel CPU"
                  : avx2_blas_gemm ? "float64 weights over 24 MB beside the AVX2 kernels: MKL's AVX2 "
                                     "path leads there"
                                   : "the BLAS is not known to be fast on this CPU";
  if (const char* gemm = std::getenv("RNNEXT_CPU_GEMM"); gemm != nullptr && *gemm != '\0') {
    TORCH_CHECK(std::strcmp(gemm, "own") == 0 || std::strcmp(gemm, "blas") == 0,
                "rnnext: RNNEXT_CPU_GEMM=", gemm, " is not a choice; expected own or blas");
    own = std::strcmp(gemm, "own") == 0;
    p.own_gemm = own;
    p.own_weight_gemm = own;
    p.gemm_reason = "forced by RNNEXT_CPU_GEMM";
  }
  p.own_matvec = p.path == Path::kBlas && own && !s.backward && s.B < kOwnGemvMaxRows;
  if (matvec) {
    p.reason = p.own_matvec ? "matrix-vector steps (one row, W_hh over 512 KB) in rnnext's kernel "
                              "on W_hh as it lies: no packing (threads split the hidden columns)"
                            : "matrix-vector steps (few rows, W_hh over 512 KB): BLAS steps stream "
                              "W_hh faster";
  }
  const bool parallel = s.threads >= 2 && s.N * s.H * s.H >= kMinParallelWork;
  if (p.path == Path::kColumns || p.own_matvec) {
    p.split = parallel && s.H > kPanelBytes / s.elem_size ? Split::kColumns : Split::kNone;
  } else {
    p.split = parallel && s.B >= 2 && !whole_blas_steps ? Split::kRows : Split::kNone;
  }
  return p;
}

}  // namespace cpu
}  // namespace rnnext
