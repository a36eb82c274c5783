// Run-time choice of the micro-kernel: the widest instruction set the CPU reports, once.
#include "kernels.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnext {
namespace cpu {

// The portable kernel: plain scalar code (the compiler may still vectorise it for the baseline ISA).
namespace base {
namespace {

template <typename TT>
struct Scalar {
  using T = TT;
  using reg = TT;
  static constexpr int W = 1, MR = 4, NR = 4;
  static reg zero() { return T(0); }
  static reg set1(T x) { return x; }
  static reg load(const T* p) { return *p; }
  static reg loadn(const T* p, int) { return *p; }
  static void store(T* p, reg v) { *p = v; }
  static void storen(T* p, reg v, int) { *p = v; }
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
  static reg tanh(reg v) { return std::tanh(v); }
  static reg relu(reg v) { return v < T(0) ? T(0) : v; }  // NaN passes
  static reg tanh_bwd(reg g, reg h) { return g * (T(1) - h * h); }
  static reg relu_bwd(reg g, reg h) { return h <= T(0) ? T(0) : g; }  // a NaN h passes g
  static void transpose(reg*) {}  // 1 x 1
};

#include "kernel_impl.h"

}  // namespace

RNNEXT_DEFINE_ISA(Scalar<float>, Scalar<double>)

}  // namespace base

namespace {

enum class Isa { kBase, kAvx2, kAvx512 };

Isa detect() {
  Isa best = Isa::kBase;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) best = Isa::kAvx512;
#endif
  // An override may only lower the choice, never pick what the CPU lacks.
  if (const char* want = std::getenv("RNNEXT_CPU_ISA")) {
    if (std::strcmp(want, "base") == 0) best = Isa::kBase;
    if (std::strcmp(want, "avx2") == 0 && best == Isa::kAvx512) best = Isa::kAvx2;
  }
  return best;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

// The entry point of the chosen instruction set: step (row-major A) or step_cm (column-major A).
template <typename T, bool ACM>
StepKernel<T> pick() {
  using Fn = StepKernel<T>;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa()) {
    case Isa::kAvx512: return ACM ? static_cast<Fn>(&avx512::step_cm) : static_cast<Fn>(&avx512::step);
    case Isa::kAvx2: return ACM ? static_cast<Fn>(&avx2::step_cm) : static_cast<Fn>(&avx2::step);
    default: break;
  }
#endif
  return ACM ? static_cast<Fn>(&base::step_cm) : static_cast<Fn>(&base::step);
}

}  // namespace

template <typename T>
StepKernel<T> step_kernel(bool a_col_major) {
  return a_col_major ? pick<T, true>() : pick<T, false>();
}
template StepKernel<float> step_kernel<float>(bool);
template StepKernel<double> step_kernel<double>(bool);

template <typename T>
void pack_transposed(const T* w, int64_t ldw, int64_t n, int64_t k, T* p, int64_t col_begin,
                     int64_t col_end, int64_t pc) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa()) {
    case Isa::kAvx512: return avx512::pack_t(w, ldw, n, k, p, col_begin, col_end, pc);
    case Isa::kAvx2: return avx2::pack_t(w, ldw, n, k, p, col_begin, col_end, pc);
    default: break;
  }
#endif
  base::pack_t(w, ldw, n, k, p, col_begin, col_end, pc);
}
template void pack_transposed<float>(const float*, int64_t, int64_t, int64_t, float*, int64_t,
                                     int64_t, int64_t);
template void pack_transposed<double>(const double*, int64_t, int64_t, int64_t, double*, int64_t,
                                      int64_t, int64_t);

template <typename T>
GemvKernel<T> gemv_kernel() {
  using Fn = GemvKernel<T>;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa()) {
    case Isa::kAvx512: return static_cast<Fn>(&avx512::gemv_t);
    case Isa::kAvx2: return static_cast<Fn>(&avx2::gemv_t);
    default: break;
  }
#endif
  return static_cast<Fn>(&base::gemv_t);
}
template GemvKernel<float> gemv_kernel<float>();
template GemvKernel<double> gemv_kernel<double>();

// The AVX-512 kernels on AMD family 19h (Zen 4, which runs each 512-bit FMA as two 256-bit halves:
// a 6 x 64 block's k row, 256 bytes of P, takes 24 cycles, ~11 bytes a cycle from L2;
// benchmarks/NOTES.md sections 84 and 85). Its AVX2 kernels (16 bytes a cycle) gained at 2048 x
// 2048 but lost 3-5% at 1024 x 1024; an Intel Xeon VM's kernel lost 4-12% of its rate with P from
// L2 (sections 42 and 47); other CPUs are unmeasured. Those keep kChunkRows.
int64_t long_chunk_rows() {
  static const int64_t rows = [] {
    if (const char* want = std::getenv("RNNEXT_CPU_LONG_CHUNKS")) {
      if (std::strcmp(want, "0") == 0) return kChunkRows;
      if (std::strcmp(want, "1") == 0) return 4 * kChunkRows;
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_is("amdfam19h") && isa() == Isa::kAvx512) return 4 * kChunkRows;
#endif
    return kChunkRows;
  }();
  return rows;
}

// Half of glibc's largest dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX, 32 MB on 64-bit): a
// block from about 32 MB is mapped at every allocation and unmapped at every free, unless the
// process sets its own threshold; below it, a block freed is reused by the next call's. The margin
// takes in a 32 MB weight whose alignment padding puts it over.
constexpr size_t kHugeBufferBytes = size_t{16} << 20;
constexpr size_t kHugePage = size_t{2} << 20;
constexpr std::align_val_t kBufferAlign{64}, kHugeAlign{kHugePage};

void* aligned_buffer(size_t bytes) {
  if (bytes < kHugeBufferBytes) return ::operator new(bytes, kBufferAlign);
  void* p = ::operator new(bytes, kHugeAlign);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // A hint: where THP is "never", or the kernel refuses, the pages stay 4 KB.
  const size_t whole = bytes / kHugePage * kHugePage;
  if (whole > 0) madvise(p, whole, MADV_HUGEPAGE);
#endif
  return p;
}

void free_aligned_buffer(void* p, size_t bytes) {
  ::operator delete(p, bytes < kHugeBufferBytes ? kBufferAlign : kHugeAlign);
}

const char* step_kernel_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace cpu
}  // namespace rnnext
