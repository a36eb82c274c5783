#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace rnnext {
namespace cpu {
namespace {

// own_gemm_tn: below this many multiply-adds (~10 us of one core) on the calling thread (a parallel
// region costs a few us; the same bound as the BLAS calls', blas.cpp).
constexpr int64_t kSerialWork = int64_t{1} << 18;
// own_gemm_rows: rows of C per task (512 was slower: W re-read from L3; NOTES.md section 25).
constexpr int64_t kRowBlock = 128;
// own_gemm_tn: a task's rows start at a multiple of this (a 64-byte line of column-major A).
constexpr int64_t kRowAlign = 16;

}  // namespace

template <typename T>
void own_gemm_rows(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* p, T* c,
                   int64_t ldc, Epilogue ep) {
  const auto kernel = step_kernel<T>();
  const int64_t ldp = packed_width<T>(n);
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
      kernel(StepArgs<T>::one(r1 - r0, n, ldp, {a + r0 * lda, lda, p, k, k}, c + r0 * ldc, ldc,
                              ep));
    }
  });
}

template <typename T>
void own_gemm_tn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 bool accumulate, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    }
    return;
  }
  const auto kernel = step_kernel<T>(/*a_col_major=*/true);
  const int64_t pc = packed_width<T>(n);
  const int64_t panels = (n + pc - 1) / pc;
  // Tasks: every panel of C's columns, each cut into `parts` row shares when there are fewer
  // panels than threads (a narrow C; each share packs the panel's B rows for itself).
  const int64_t threads = at::get_num_threads();
  const int64_t parts =
      std::max<int64_t>(1, std::min((threads + panels - 1) / panels, (m + kRowAlign - 1) / kRowAlign));
  const int64_t tasks = panels * parts;
  const int64_t grain = m * n * k < kSerialWork ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    AlignedBuffer<T> buf(kChunkRows * pc);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t panel = t / parts, part = t % parts;
      const int64_t j0 = panel * pc, cols = std::min(pc, n - j0);
      const int64_t r0 = std::min(m, (part * m / parts + kRowAlign - 1) / kRowAlign * kRowAlign);
      const int64_t r1 =
          part + 1 == parts ? m : std::min(m, ((part + 1) * m / parts + kRowAlign - 1) / kRowAlign * kRowAlign);
      if (r1 <= r0) continue;
      for (int64_t q0 = 0; q0 < k; q0 += kChunkRows) {
        const int64_t kc = std::min(kChunkRows, k - q0);
        for (int64_t q = 0; q < kc; ++q) {  // B's rows q0.. of this panel, zero past column n
          T* dst = buf.data() + q * pc;
          std::memcpy(dst, b + (q0 + q) * ldb + j0, static_cast<size_t>(cols) * sizeof(T));
          std::fill(dst + cols, dst + pc, T(0));
        }
        const Epilogue ep = q0 == 0 && !accumulate ? Epilogue::kZero : Epilogue::kNone;
        kernel(StepArgs<T>::one(r1 - r0, cols, pc, {a + q0 * lda + r0, lda, buf.data(), kc, kc},
                                c + r0 * ldc + j0, ldc, ep));
      }
    }
  });
}

template void own_gemm_rows<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                   float*, int64_t, Epilogue);
template void own_gemm_rows<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                    const double*, double*, int64_t, Epilogue);
template void own_gemm_tn<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                 int64_t, bool, float*, int64_t);
template void own_gemm_tn<double>(int64_t, int64_t, int64_t, const double*, int64_t, const double*,
                                  int64_t, bool, double*, int64_t);

}  // namespace cpu
}  // namespace rnnext
