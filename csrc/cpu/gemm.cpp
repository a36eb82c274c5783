#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
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
// own_gemm_rows: with fewer row blocks than this many a thread, and not as many for each (a call of
// few rows: T = 20, B = 4 is one block, which one thread took while the other waited), every
// block's panels are split between the threads too. 2 threads, AVX-512, Zen 4, T = 20, I = H = 2048,
// the forward (its steps included; NOTES.md section 97): float32 B = 4 14.5 -> 10.8 ms, B = 16
// (3 blocks) 34.3 -> 30.8; float64 33.0 -> 29.0 and 76.8 -> 66.4.
constexpr int64_t kUnevenBlocks = 8;
// own_gemm_tn: a task's rows start at a multiple of this (a 64-byte line of column-major A).
constexpr int64_t kRowAlign = 16;
// own_gemm_tn: k slices of at least this many rows (two chunks), and at most this many bytes of
// the slices' own Cs (summed into C on the calling thread).
constexpr int64_t kMinSlice = 2 * kChunkRows;
constexpr int64_t kMaxPartialBytes = int64_t{1} << 20;
// own_gemm_tn: a task over at least this many panels of C transposes each chunk of A once for
// all of them and reads it row-major (NOTES.md section 54: 1024 x 1024 +12-18%, 128 x 128 -15%).
constexpr int64_t kTransposeAPanels = 8;
// own_gemm_tn: where a task's part of C is over this many bytes (past a core's L2), C is loaded and
// stored once a k chunk from L3 or memory, at every block's start and end: each block asks for
// the next block's rows of C as it starts (StepArgs::c_far; NOTES.md section 89), and k comes in
// chunks of long_chunk_rows() rows, where four times fewer such trips pay for reading the chunk of
// B from L2 rather than L1 (section 84).
constexpr int64_t kLongChunkC = int64_t{1} << 20;

}  // namespace

template <typename T>
void own_gemm_rows(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* p, T* c,
                   int64_t ldc, Epilogue ep, const T* start) {
  if (rows <= 0 || n <= 0) return;  // (and packed_width is 0 at n = 0)
  const auto kernel = step_kernel<T>();
  const int64_t ldp = packed_width<T>(n);
  // A task's rows of C come back from L2 at every chunk of k: long chunks, where the CPU takes
  // them, make a quarter of those trips (NOTES.md section 85).
  const int64_t chunk_rows = long_chunk_rows();
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t panels = (n + ldp - 1) / ldp;
  const int64_t threads = at::get_num_threads();
  const int64_t parts =
      blocks % threads != 0 && blocks < kUnevenBlocks * threads && rows * n * k >= kSerialWork
          ? std::min(panels, threads)
          : 1;
  at::parallel_for(0, blocks * parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / parts, part = t % parts;
      const int64_t r0 = b * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
      const int64_t j0 = panels * part / parts * ldp;
      const int64_t j1 = std::min(n, panels * (part + 1) / parts * ldp);
      const Product<T> prod{a + r0 * lda, lda, p + j0 * k, k, k};  // panels from j0's on
      StepArgs<T> st = StepArgs<T>::one(r1 - r0, j1 - j0, ldp, prod, c + r0 * ldc + j0, ldc, ep);
      st.chunk_rows = chunk_rows;
      st.init = start != nullptr ? start + j0 : nullptr;
      kernel(st);
    }
  });
}

template <typename T>
void pack_weight_shared(const T* w, int64_t ldw, int64_t n, int64_t k, bool transpose, T* p) {
  const int64_t pc = packed_width<T>(n);
  if (n * k < kSerialWork) return pack_weight<T>(w, ldw, n, k, transpose, p);
  const int64_t panels = (n + pc - 1) / pc;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    pack_weight<T>(w, ldw, n, k, transpose, p, p0 * pc, p1 * pc);
  });
}

template <typename T>
void own_gemm_tn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 bool accumulate, T* c, int64_t ldc, const T* const* b_rows) {
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
  const int64_t threads = at::get_num_threads();
  const auto kernel_rm = step_kernel<T>(/*a_col_major=*/false);
  // The task loop: C's rows [r0, r1) and panels [p0, p1), k rows [k0, k1), into cc (row stride
  // ldcc), accumulating or not.
  const auto run = [&](int64_t k0, int64_t k1, int64_t r0, int64_t r1, int64_t p0, int64_t p1,
                       T* cc, int64_t ldcc, bool acc) {
    const int64_t rows = r1 - r0;
    // Over many panels, A's chunk transposed once into rows (row r: its k entries, lda_t apart)
    // and read row-major by every panel; else A read in place, column-major.
    const bool transpose_a = p1 - p0 >= kTransposeAPanels;
    const int64_t c_part = rows * std::min(n - p0 * pc, (p1 - p0) * pc) * int64_t{sizeof(T)};
    const bool c_far = c_part > kLongChunkC;
    const bool long_chunks = transpose_a && c_far;
    const int64_t step = long_chunks ? long_chunk_rows() : kChunkRows;
    const int64_t lda_t = (step + kPackAlign - 1) / kPackAlign * kPackAlign;
    AlignedBuffer<T> buf(step * pc * (p1 - p0));
    AlignedBuffer<T> at(transpose_a ? lda_t * rows : 0);
    // k in chunks, the outer loop: a chunk of B's rows packed for all the task's panels, then
    // every panel over the task's rows, A's chunk staying in L2 between the panels.
    for (int64_t q0 = k0; q0 < k1; q0 += step) {
      const int64_t kc = std::min(step, k1 - q0);
      for (int64_t pi = p0; pi < p1; ++pi) {
        const int64_t j0 = pi * pc, cols = std::min(pc, n - j0);
        T* dst = buf.data() + (pi - p0) * step * pc;
        if (b_rows == nullptr) {
          pack_weight<T>(b + q0 * ldb + j0, ldb, cols, kc, /*transpose=*/false, dst);
          continue;
        }
        const int64_t ldp = packed_width<T>(cols);  // pack_weight's layout, row by row
        for (int64_t q = 0; q < kc; ++q) {
          T* d = dst + q * ldp;
          const T* src = b_rows[q0 + q];
          if (src != nullptr) std::copy(src + j0, src + j0 + cols, d);
          std::fill(d + (src != nullptr ? cols : 0), d + ldp, T(0));
        }
      }
      if (transpose_a) transpose_rows<T>(a + q0 * lda + r0, lda, kc, rows, at.data(), lda_t);
      const Epilogue ep = q0 == k0 && !acc ? Epilogue::kZero : Epilogue::kNone;
      for (int64_t pi = p0; pi < p1; ++pi) {
        const int64_t j0 = pi * pc, cols = std::min(pc, n - j0), ldp = packed_width<T>(cols);
        const T* bp = buf.data() + (pi - p0) * step * pc;
        StepArgs<T> st = StepArgs<T>::one(
            rows, cols, ldp,
            transpose_a ? Product<T>{at.data(), lda_t, bp, kc, kc}
                        : Product<T>{a + q0 * lda + r0, lda, bp, kc, kc},
            cc + r0 * ldcc + j0, ldcc, ep);
        st.chunk_rows = step;
        st.c_far = c_far;
        // The next chunk's rows of A and B, a share of them a panel, brought into L2 while this
        // chunk computes (they come from L3 or memory: the hardware prefetchers leave the kernel
        // waiting on them, ~10% at m = n = 128; NOTES.md section 62).
        if (q0 + kc < k1) {
          const int64_t kn = std::min(step, k1 - q0 - kc), share = pi - p0, of = p1 - p0;
          // `count` rows from base, ld apart.
          const auto next = [&](int i, const T* base, int64_t count, int64_t ld, int64_t width) {
            // Whole rows only (a k slice's task; a share of the rows or panels would fetch its
            // neighbour's lines too: not measured).
            if (width != ld) return;
            const int64_t bytes = ((count - 1) * ld + width) * static_cast<int64_t>(sizeof(T));
            st.prefetch[i] = reinterpret_cast<const char*>(base) + share * bytes / of;
            st.prefetch_bytes[i] = bytes / of;
          };
          next(0, a + (q0 + kc) * lda + r0, kn, lda, rows);
          const int64_t width = std::min(n, p1 * pc) - p0 * pc;
          if (b_rows == nullptr) {
            next(1, b + (q0 + kc) * ldb + p0 * pc, kn, ldb, width);
          } else {
            // Given rows: those from the chunk's first row to its last, where both are rows of one
            // matrix a multiple of ldb apart and span at most twice the chunk (a ragged batch's
            // h_prev in the forward's output, skipping the rows of sequences that ended).
            const T* first = b_rows[q0 + kc];
            const auto addr = [](const T* p) { return reinterpret_cast<std::uintptr_t>(p); };
            const std::uintptr_t from = addr(first), to = addr(b_rows[q0 + kc + kn - 1]);
            const std::uintptr_t row = static_cast<std::uintptr_t>(ldb) * sizeof(T);
            if (first != nullptr && to >= from && (to - from) % row == 0 &&
                (to - from) / row < static_cast<std::uintptr_t>(2 * kn)) {
              next(1, first + p0 * pc, static_cast<int64_t>((to - from) / row) + 1, ldb, width);
            }
          }
        }
        (transpose_a ? kernel_rm : kernel)(st);
      }
    }
  };
  // Tasks: k slices, shares of C's rows (A's columns) and groups of C's panels, in that order of
  // preference. k slices where C is small (each slice beyond the first sums into a C of its own,
  // added at the end): a thread then reads only its slice of A and of B, packs no B rows another
  // thread packs too, and runs at one thread's rate (Xeon, 2 threads, m = n = 128, k = 3200:
  // 64-66% of the FMA peak against 55-57% with row shares; NOTES.md section 54). Then row shares,
  // each over every panel (a thread reads its part of A only, every chunk of it serving all the
  // panels from L2: 59-60% against 53-56% with a panel a thread), and groups of panels only where
  // m is a single 16-row share.
  const int64_t c_bytes = m * n * static_cast<int64_t>(sizeof(T));
  const int64_t kparts = std::max<int64_t>(
      1, std::min({threads, k / kMinSlice, 1 + kMaxPartialBytes / std::max<int64_t>(1, c_bytes)}));
  const int64_t per = (threads + kparts - 1) / kparts;  // threads a k slice
  const int64_t parts = std::max<int64_t>(1, std::min(per, (m + kRowAlign - 1) / kRowAlign));
  const int64_t groups = std::min(panels, (per + parts - 1) / parts);
  const int64_t tasks = kparts * parts * groups;
  const int64_t grain = m * n * k < kSerialWork ? tasks : 1;
  AlignedBuffer<T> partial((kparts - 1) * m * n);
  // Row share i's first row: a multiple of kRowAlign (m for i = parts).
  const auto row_bound = [&](int64_t i) {
    return i == parts ? m : std::min(m, (i * m / parts + kRowAlign - 1) / kRowAlign * kRowAlign);
  };
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t slice = t / (parts * groups), group = t / parts % groups, part = t % parts;
      const int64_t k0 = slice * k / kparts, k1 = (slice + 1) * k / kparts;
      const int64_t p0 = group * panels / groups, p1 = (group + 1) * panels / groups;
      const int64_t r0 = row_bound(part), r1 = row_bound(part + 1);
      if (r1 <= r0) continue;
      if (slice == 0) {
        run(k0, k1, r0, r1, p0, p1, c, ldc, accumulate);
      } else {
        run(k0, k1, r0, r1, p0, p1, partial.data() + (slice - 1) * m * n, n, false);
      }
    }
  });
  for (int64_t slice = 1; slice < kparts; ++slice) {
    const T* src = partial.data() + (slice - 1) * m * n;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] += src[i * n + j];
    }
  }
}

template void pack_weight_shared<float>(const float*, int64_t, int64_t, int64_t, bool, float*);
template void pack_weight_shared<double>(const double*, int64_t, int64_t, int64_t, bool, double*);
template void own_gemm_rows<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                   float*, int64_t, Epilogue, const float*);
template void own_gemm_rows<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                    const double*, double*, int64_t, Epilogue, const double*);
template void own_gemm_tn<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                 int64_t, bool, float*, int64_t, const float* const*);
template void own_gemm_tn<double>(int64_t, int64_t, int64_t, const double*, int64_t, const double*,
                                  int64_t, bool, double*, int64_t, const double* const*);

}  // namespace cpu
}  // namespace rnnext
