// The GEMMs over all rows of a call in the micro-kernel (kernels.h), threaded with at::parallel_for:
// the input projection and grad_input (own_gemm_rows), and the weight gradients (own_gemm_tn).
// The planner chooses them over the BLAS where the BLAS is not known to be good on this CPU
// (plan.h, Plan::own_gemm).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace rnnext {
namespace cpu {

// pack_weight (kernels.h) of a whole weight that every thread will read (the projection's W_ih^T,
// grad_input's W_ih), its panels split between the threads: the calling thread alone packed 32 MB
// while the others waited (float64 T = 20, B = 4, I = H = 2048, 2 threads: 29.0 -> 24.5 ms a
// forward; NOTES.md section 97).
template <typename T>
void pack_weight_shared(const T* w, int64_t ldw, int64_t n, int64_t k, bool transpose, T* p);

// C[rows, n] = epilogue(S + A P): A row-major [rows, k] (row stride lda), P packed (pack_weight:
// n columns, k rows), C row stride ldc; S is every row's start where start is set (n entries: a
// bias; C is then not read), else zero with Epilogue::kZero, else C. Blocks of rows split between
// threads, and their panels too where the blocks are few and not as many for each thread.
template <typename T>
void own_gemm_rows(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* p, T* c,
                   int64_t ldc, Epilogue ep, const T* start = nullptr);

// C[m, n] = A^T B (+ C when accumulate): A [k, m] and B [k, n] row-major (row strides lda, ldb),
// C [m, n] row stride ldc; the weight gradients dpre^T x and dpre^T h_prev. A is read in place
// (column-major A^T, step_cm); each task (a slice of k, a share of C's rows, and its panels of
// C's columns) packs its panels' B rows kChunkRows at a time; a slice of k beyond the first sums
// into a C of its own, added to C at the end. k = 0 gives C = 0 (or leaves C when accumulating).
// With b_rows, B's row q is b_rows[q] (n entries; nullptr: zeros) and b is not read: a ragged
// batch's h_prev rows where they lie, with no gathered copy (ldb: their usual distance, for the
// prefetch).
template <typename T>
void own_gemm_tn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 bool accumulate, T* c, int64_t ldc, const T* const* b_rows = nullptr);

}  // namespace cpu
}  // namespace rnnext
