#include "blas.h"

#include <dlfcn.h>

namespace rnnext {
namespace cpu {
namespace {

template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                             const T*, const T*, const int*, const T*, const int*, const T*, T*,
                             const int*);

// The BLAS that libtorch carries, looked up once per type; nullptr when there is none.
template <typename T>
FortranGemm<T> blas();
template <>
FortranGemm<float> blas<float>() {
  static const auto f = reinterpret_cast<FortranGemm<float>>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return f;
}
template <>
FortranGemm<double> blas<double>() {
  static const auto f = reinterpret_cast<FortranGemm<double>>(dlsym(RTLD_DEFAULT, "dgemm_"));
  return f;
}

// MKL runs even a tiny GEMM on all its OpenMP threads: a fork/join of a few us, and a worker that
// spins afterwards on the machine's other core. Below this many multiply-adds (~10 us of one
// core) a call runs on the calling thread alone: MKL_Set_Num_Threads_Local (the C entry; the
// lower-case one is Fortran's, taking a pointer) when the BLAS is MKL; others choose for themselves.
constexpr int64_t kSerialGemm = int64_t{1} << 18;

using MklSetLocal = int (*)(int);
MklSetLocal mkl_set_local() {
  static const auto f =
      reinterpret_cast<MklSetLocal>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  return f;
}

// Column-major C[m, n] = op(A) op(B) + beta C, as BLAS defines it (ta, tb: 'N' or 'T'); a plain
// loop when there is no BLAS. k = 0 scales C by beta (a BLAS may reject k = 0's leading dimensions).
template <typename T>
void gemm_cm(char ta, char tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
             int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // beta C alone (C = 0 for beta = 0, whatever C held)
    for (int64_t j = 0; j < n; ++j) {
      T* col = c + j * ldc;
      for (int64_t i = 0; i < m; ++i) col[i] = beta == T(0) ? T(0) : beta * col[i];
    }
    return;
  }
  const FortranGemm<T> f = blas<T>();
  if (f != nullptr) {
    const int m_ = static_cast<int>(m), n_ = static_cast<int>(n), k_ = static_cast<int>(k);
    const int lda_ = static_cast<int>(lda), ldb_ = static_cast<int>(ldb), ldc_ = static_cast<int>(ldc);
    const T one = 1;
    const MklSetLocal set_local = m * n * k < kSerialGemm ? mkl_set_local() : nullptr;
    const int prev = set_local != nullptr ? set_local(1) : 0;
    f(&ta, &tb, &m_, &n_, &k_, &one, a, &lda_, b, &ldb_, &beta, c, &ldc_);
    if (set_local != nullptr) set_local(prev);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      T acc = 0;
      for (int64_t l = 0; l < k; ++l) {
        const T a_il = ta == 'N' ? a[i + l * lda] : a[l + i * lda];
        const T b_lj = tb == 'N' ? b[l + j * ldb] : b[j + l * ldb];
        acc += a_il * b_lj;
      }
      c[i + j * ldc] = (beta == T(0) ? T(0) : beta * c[i + j * ldc]) + acc;
    }
  }
}

// Row-major C[rows, n] = X op(W) is column-major C^T = op(W)^T X^T: W as stored is op(W)^T when
// trans_w ('T' brings W back), X as stored is X^T ('N').
template <typename T>
void gemm_rows_impl(bool trans_w, int64_t rows, int64_t n, int64_t k, const T* x, int64_t ldx,
                    const T* w, int64_t ldw, T beta, T* c, int64_t ldc) {
  gemm_cm<T>(trans_w ? 'T' : 'N', 'N', n, rows, k, w, ldw, x, ldx, beta, c, ldc);
}

// Row-major C[m, n] = A^T B is column-major C^T[n, m] = B^T A: B (row-major [k, n]) is column-major
// B^T as stored ('N'); A (row-major [k, m]) is column-major A^T, transposed back ('T').
template <typename T>
void gemm_tn_impl(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                  T beta, T* c, int64_t ldc) {
  gemm_cm<T>('N', 'T', n, m, k, b, ldb, a, lda, beta, c, ldc);
}

}  // namespace

void gemm_tn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm_tn_impl(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void gemm_tn(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
             int64_t ldb, double beta, double* c, int64_t ldc) {
  gemm_tn_impl(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void gemm_rows(bool trans_w, int64_t rows, int64_t n, int64_t k, const float* x, int64_t ldx,
               const float* w, int64_t ldw, float beta, float* c, int64_t ldc) {
  gemm_rows_impl(trans_w, rows, n, k, x, ldx, w, ldw, beta, c, ldc);
}

void gemm_rows(bool trans_w, int64_t rows, int64_t n, int64_t k, const double* x, int64_t ldx,
               const double* w, int64_t ldw, double beta, double* c, int64_t ldc) {
  gemm_rows_impl(trans_w, rows, n, k, x, ldx, w, ldw, beta, c, ldc);
}

}  // namespace cpu
}  // namespace rnnext
