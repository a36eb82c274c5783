// Row-major GEMM on raw pointers for the recurrence, with no dispatcher call and no allocation.
// It calls the Fortran BLAS that libtorch_cpu carries (MKL or OpenBLAS export sgemm_/dgemm_),
// looked up once at run time; without one it falls back to a plain loop.
#pragma once

#include <cstdint>

namespace rnnext {
namespace cpu {

// C[rows, n] = X[rows, k] @ op(W) + beta * C, every matrix row-major with the given row strides.
// op(W) = W^T where W is [n, k] (trans_w), else W where W is [k, n].
void gemm_rows(bool trans_w, int64_t rows, int64_t n, int64_t k, const float* x, int64_t ldx,
               const float* w, int64_t ldw, float beta, float* c, int64_t ldc);
void gemm_rows(bool trans_w, int64_t rows, int64_t n, int64_t k, const double* x, int64_t ldx,
               const double* w, int64_t ldw, double beta, double* c, int64_t ldc);

// C[m, n] = A^T B + beta * C with A [k, m] and B [k, n], all row-major with the given row strides
// (the weight gradients dpre^T x and dpre^T h_prev). k = 0 gives beta * C (C = 0 for beta = 0).
void gemm_tn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc);
void gemm_tn(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
             int64_t ldb, double beta, double* c, int64_t ldc);

}  // namespace cpu
}  // namespace rnnext
