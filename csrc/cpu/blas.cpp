#include "blas.h"

#include <dlfcn.h>

namespace rnnext {
namespace cpu {
namespace {

template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                             const T*, const T*, const int*, const T*, const int*, const T*, T*,
                             const int*);

template <typename T>
FortranGemm<T> lookup(const char* name) {
  return reinterpret_cast<FortranGemm<T>>(dlsym(RTLD_DEFAULT, name));
}

template <typename T>
void naive(bool trans_w, int64_t rows, int64_t n, int64_t k, const T* x, int64_t ldx, const T* w,
           int64_t ldw, T beta, T* c, int64_t ldc) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      T acc = 0;
      for (int64_t i = 0; i < k; ++i) {
        acc += x[r * ldx + i] * (trans_w ? w[j * ldw + i] : w[i * ldw + j]);
      }
      c[r * ldc + j] = (beta == T(0) ? T(0) : beta * c[r * ldc + j]) + acc;
    }
  }
}

template <typename T>
void gemm_impl(FortranGemm<T> f, bool trans_w, int64_t rows, int64_t n, int64_t k, const T* x,
               int64_t ldx, const T* w, int64_t ldw, T beta, T* c, int64_t ldc) {
  if (rows == 0 || n == 0) return;
  if (f == nullptr || k == 0) {
    naive(trans_w, rows, n, k, x, ldx, w, ldw, beta, c, ldc);
    return;
  }
  // Row-major C = X op(W) is column-major C^T = op(W)^T X^T.
  const char ta = trans_w ? 'T' : 'N';
  const char tb = 'N';
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
  const int lda = static_cast<int>(ldw), ldb = static_cast<int>(ldx), ldc_ = static_cast<int>(ldc);
  const T one = 1;
  f(&ta, &tb, &m_, &n_, &k_, &one, w, &lda, x, &ldb, &beta, c, &ldc_);
}

template <typename T>
void gemm_tn_impl(FortranGemm<T> f, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                  const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (f == nullptr || k == 0) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        T acc = 0;
        for (int64_t r = 0; r < k; ++r) acc += a[r * lda + i] * b[r * ldb + j];
        c[i * ldc + j] = (beta == T(0) ? T(0) : beta * c[i * ldc + j]) + acc;
      }
    }
    return;
  }
  // Row-major C = A^T B is column-major C^T[n, m] = B^T A: B (row-major [k, n]) is column-major
  // B^T as stored ('N'); A (row-major [k, m]) is column-major A^T, transposed back ('T').
  const char ta = 'N', tb = 'T';
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(m), k_ = static_cast<int>(k);
  const int lda_ = static_cast<int>(ldb), ldb_ = static_cast<int>(lda), ldc_ = static_cast<int>(ldc);
  const T one = 1;
  f(&ta, &tb, &m_, &n_, &k_, &one, b, &lda_, a, &ldb_, &beta, c, &ldc_);
}

}  // namespace

void gemm_tn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc) {
  static const FortranGemm<float> f = lookup<float>("sgemm_");
  gemm_tn_impl(f, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void gemm_tn(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
             int64_t ldb, double beta, double* c, int64_t ldc) {
  static const FortranGemm<double> f = lookup<double>("dgemm_");
  gemm_tn_impl(f, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void gemm_rows(bool trans_w, int64_t rows, int64_t n, int64_t k, const float* x, int64_t ldx,
               const float* w, int64_t ldw, float beta, float* c, int64_t ldc) {
  static const FortranGemm<float> f = lookup<float>("sgemm_");
  gemm_impl(f, trans_w, rows, n, k, x, ldx, w, ldw, beta, c, ldc);
}

void gemm_rows(bool trans_w, int64_t rows, int64_t n, int64_t k, const double* x, int64_t ldx,
               const double* w, int64_t ldw, double beta, double* c, int64_t ldc) {
  static const FortranGemm<double> f = lookup<double>("dgemm_");
  gemm_impl(f, trans_w, rows, n, k, x, ldx, w, ldw, beta, c, ldc);
}

}  // namespace cpu
}  // namespace rnnext
