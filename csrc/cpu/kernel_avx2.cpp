// The micro-kernel for AVX2 + FMA: 8 float / 4 double lanes, 4 x 3 register blocks (12 of the 16
// ymm registers accumulate: with 8, two FMA units of 4-5 cycles latency wait on them; NOTES.md
// section 80).
// Compiled for that target by pragma; called only when the CPU reports AVX2 and FMA (kernels.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace rnnext {
namespace cpu {
namespace avx2 {
namespace {

alignas(64) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
alignas(64) const int64_t kMaskTable64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

struct F32 {
  using T = float;
  using reg = __m256;
  static constexpr int W = 8, MR = 4, NR = 3;
  static __m256i mask(int m) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - m));
  }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg loadn(const float* p, int m) { return _mm256_maskload_ps(p, mask(m)); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static void storen(float* p, reg v, int m) { _mm256_maskstore_ps(p, mask(m), v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg sign() { return _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u))); }
  static reg abs(reg a) { return _mm256_andnot_ps(sign(), a); }
  static reg min_keep_nan(reg c, reg a) { return _mm256_min_ps(c, a); }
  static reg copysign(reg mag, reg sgn) {
    return _mm256_or_ps(_mm256_and_ps(sgn, sign()), _mm256_andnot_ps(sign(), mag));
  }
  static void transpose(reg* r) {  // 8 x 8
    reg t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  static reg tanh(reg v);
  static reg relu(reg v) { return _mm256_max_ps(zero(), v); }
  static reg tanh_bwd(reg g, reg h) { return _mm256_mul_ps(g, _mm256_fnmadd_ps(h, h, set1(1.0f))); }
  // h <= 0 ? 0 : g (a NaN h passes g, as torch's threshold_backward)
  static reg relu_bwd(reg g, reg h) { return _mm256_and_ps(_mm256_cmp_ps(h, zero(), _CMP_NLE_UQ), g); }
};

struct F64 {
  using T = double;
  using reg = __m256d;
  static constexpr int W = 4, MR = 4, NR = 3;
  static __m256i mask(int m) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable64 + 4 - m));
  }
  static reg zero() { return _mm256_setzero_pd(); }
  static reg set1(double x) { return _mm256_set1_pd(x); }
  static reg load(const double* p) { return _mm256_loadu_pd(p); }
  static reg loadn(const double* p, int m) { return _mm256_maskload_pd(p, mask(m)); }
  static void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static void storen(double* p, reg v, int m) { _mm256_maskstore_pd(p, mask(m), v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_pd(a, b); }
  static reg sign() { return _mm256_castsi256_pd(_mm256_set1_epi64x(static_cast<int64_t>(0x8000000000000000ull))); }
  static reg abs(reg a) { return _mm256_andnot_pd(sign(), a); }
  static reg min_keep_nan(reg c, reg a) { return _mm256_min_pd(c, a); }
  static reg round(reg a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg scale_pow2(reg e, reg n) {  // e * 2^n for integral n in [0, 58]
    const __m256i bits = _mm256_slli_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), 52);
    return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(e), bits));
  }
  static reg copysign(reg mag, reg sgn) {
    return _mm256_or_pd(_mm256_and_pd(sgn, sign()), _mm256_andnot_pd(sign(), mag));
  }
  static void transpose(reg* r) {  // 4 x 4
    const reg t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const reg t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
  static reg tanh(reg v);
  static reg relu(reg v) { return _mm256_max_pd(zero(), v); }
  static reg tanh_bwd(reg g, reg h) { return _mm256_mul_pd(g, _mm256_fnmadd_pd(h, h, set1(1.0))); }
  static reg relu_bwd(reg g, reg h) { return _mm256_and_pd(_mm256_cmp_pd(h, zero(), _CMP_NLE_UQ), g); }
};

#include "kernel_impl.h"

inline F32::reg F32::tanh(reg v) { return tanh_f32<F32>(v); }
inline F64::reg F64::tanh(reg v) { return tanh_f64<F64>(v); }

}  // namespace

RNNEXT_DEFINE_ISA(F32, F64)

}  // namespace avx2
}  // namespace cpu
}  // namespace rnnext

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
