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

}  // namespace cpu
}  // namespace rnnext
