// Run-time choice of the micro-kernel: the widest instruction set the CPU reports, once.
#include "kernels.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

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
  static reg tanh(reg v) { return std::tanh(v); }
  static reg relu(reg v) { return v < T(0) ? T(0) : v; }  // NaN passes
  static reg tanh_bwd(reg g, reg h) { return g * (T(1) - h * h); }
  static reg relu_bwd(reg g, reg h) { return h <= T(0) ? T(0) : g; }  // a NaN h passes g
};

#include "kernel_impl.h"

}  // namespace

void step(int64_t rows, int64_t n, int64_t k, const float* a, int64_t lda, const float* p,
          int64_t ldp, int64_t kp, float* c, int64_t ldc, const float* aux, Epilogue ep) {
  step_impl<Scalar<float>>(rows, n, k, a, lda, p, ldp, kp, c, ldc, aux, ep);
}
void step(int64_t rows, int64_t n, int64_t k, const double* a, int64_t lda, const double* p,
          int64_t ldp, int64_t kp, double* c, int64_t ldc, const double* aux, Epilogue ep) {
  step_impl<Scalar<double>>(rows, n, k, a, lda, p, ldp, kp, c, ldc, aux, ep);
}

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

template <typename T>
StepKernel<T> pick() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa()) {
    case Isa::kAvx512: return static_cast<StepKernel<T>>(&avx512::step);
    case Isa::kAvx2: return static_cast<StepKernel<T>>(&avx2::step);
    default: break;
  }
#endif
  return static_cast<StepKernel<T>>(&base::step);
}

}  // namespace

StepKernel<float> step_kernel_f32() { return pick<float>(); }
StepKernel<double> step_kernel_f64() { return pick<double>(); }
const char* step_kernel_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace cpu
}  // namespace rnnext
