// The micro-kernel for AVX-512 (F + DQ): 16 float / 8 double lanes, register blocks of up
// to 6 rows x 4 vectors (24 accumulators of the 32 registers).
// Compiled for that target by pragma; called only when the CPU reports AVX-512 (kernels.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNNEXT_HAVE_AVX512 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
// GCC 12 warns inside its own avx512fintrin.h (_mm512_undefined_*): a known false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace rnnext {
namespace cpu {
namespace avx512 {
namespace {

inline __mmask16 mask16(int m) { return static_cast<__mmask16>((1u << m) - 1u); }
inline __mmask8 mask8(int m) { return static_cast<__mmask8>((1u << m) - 1u); }

struct F32 {
  using T = float;
  using reg = __m512;
  static constexpr int W = 16, MR = 6, NR = 4;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg loadn(const float* p, int m) { return _mm512_maskz_loadu_ps(mask16(m), p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static void storen(float* p, reg v, int m) { _mm512_mask_storeu_ps(p, mask16(m), v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg abs(reg a) { return _mm512_abs_ps(a); }
  // min(c, a), returning a when a is NaN (the second operand wins on NaN).
  static reg min_keep_nan(reg c, reg a) { return _mm512_min_ps(c, a); }
  static reg copysign(reg mag, reg sgn) {  // sign bit ? sgn : mag, bitwise (0xCA: A ? B : C)
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(sign, _mm512_castps_si512(sgn),
                                                         _mm512_castps_si512(mag), 0xCA));
  }
  static void transpose(reg* r) {  // 16 x 16: r[i] lane j <- r[j] lane i
    reg t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
      t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
  }
  static reg tanh(reg v);
  static reg relu(reg v) { return _mm512_max_ps(zero(), v); }  // NaN passes (second operand)
  static reg tanh_bwd(reg g, reg h) { return _mm512_mul_ps(g, _mm512_fnmadd_ps(h, h, set1(1.0f))); }
  static reg relu_bwd(reg g, reg h) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, zero(), _CMP_NLE_UQ), g);  // h <= 0 ? 0 : g
  }
};

struct F64 {
  using T = double;
  using reg = __m512d;
  static constexpr int W = 8, MR = 6, NR = 4;
  static reg zero() { return _mm512_setzero_pd(); }
  static reg set1(double x) { return _mm512_set1_pd(x); }
  static reg load(const double* p) { return _mm512_loadu_pd(p); }
  static reg loadn(const double* p, int m) { return _mm512_maskz_loadu_pd(mask8(m), p); }
  static void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static void storen(double* p, reg v, int m) { _mm512_mask_storeu_pd(p, mask8(m), v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_pd(a, b); }
  static reg abs(reg a) { return _mm512_abs_pd(a); }
  static reg min_keep_nan(reg c, reg a) { return _mm512_min_pd(c, a); }
  static reg round(reg a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg scale_pow2(reg e, reg n) { return _mm512_scalef_pd(e, n); }  // e * 2^n, n integral
  static reg copysign(reg mag, reg sgn) {  // sign bit ? sgn : mag, bitwise (0xCA: A ? B : C)
    const __m512i sign = _mm512_set1_epi64(static_cast<int64_t>(0x8000000000000000ull));
    return _mm512_castsi512_pd(_mm512_ternarylogic_epi64(sign, _mm512_castpd_si512(sgn),
                                                         _mm512_castpd_si512(mag), 0xCA));
  }
  static void transpose(reg* r) {  // 8 x 8
    reg t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0x88);
      u[i + 1] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0x88);
      u[i + 2] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0xDD);
      u[i + 3] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm512_shuffle_f64x2(u[i], u[i + 4], 0x88);
      r[i + 4] = _mm512_shuffle_f64x2(u[i], u[i + 4], 0xDD);
    }
  }
  static reg tanh(reg v);
  static reg relu(reg v) { return _mm512_max_pd(zero(), v); }
  static reg tanh_bwd(reg g, reg h) { return _mm512_mul_pd(g, _mm512_fnmadd_pd(h, h, set1(1.0))); }
  static reg relu_bwd(reg g, reg h) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(h, zero(), _CMP_NLE_UQ), g);
  }
};

#include "kernel_impl.h"

inline F32::reg F32::tanh(reg v) { return tanh_f32<F32>(v); }
inline F64::reg F64::tanh(reg v) { return tanh_f64<F64>(v); }

}  // namespace

RNNEXT_DEFINE_ISA(F32, F64)

}  // namespace avx512
}  // namespace cpu
}  // namespace rnnext

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
