// The per-step micro-kernel of the CPU recurrence, one implementation per instruction set
// (AVX-512, AVX2+FMA, portable), chosen once at run time from the CPU's features. One call:
//
//   C[r, 0:n] = epilogue(S[r, 0:n] + A1[r, :] P1 + A2[r, :] P2)   for r < rows
//
// (StepArgs below): up to two products summed in the same register blocks (a step's input
// product x_t W_ih^T and its recurrent product h_{t-1} W_hh^T), S the start (a bias row, the rows
// of another matrix, C itself, or zero), and the result stored to C and, when asked, to a second
// matrix as well (a thread's private rows and the shared output), so a step makes one pass over
// its rows and no copies (benchmarks/NOTES.md section 47).
//
// Each P is a packed weight (pack_weight): column panels of ldp = packed_width<T>(n) columns (256
// bytes of a row, or the whole width rounded up to kPackAlign when narrower), each panel its kp
// rows one after the other (kp * ldp entries), zero past column n, so every vector load of P is
// whole and one panel's rows stream contiguously. The kernel walks the two products' k as one,
// in chunks of kChunkRows rows (a chunk of a panel, 32 KB, stays in L1 while every row block of C
// passes over it; StepArgs::chunk_rows asks for longer), keeps the partial sums in C between
// chunks, and applies the epilogue after the last chunk. k1 + k2 = 0 applies only the start and
// the epilogue. Row-major A and C.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>

namespace rnnext {
namespace cpu {

constexpr int64_t kPanelBytes = 256;  // one packed panel row: 64 float / 32 double columns
constexpr int64_t kPackAlign = 16;     // narrower weights: one panel, width a multiple of this
constexpr int64_t kChunkRows = 128;   // rows of a panel per k chunk: 32 KB, within L1
// A call's packed weights over this many bytes come from L3 at every step: the kernel then
// prefetches the next chunk's rows of P into L2 while a chunk computes (kernel_impl.h).
constexpr int64_t kStreamWeightBytes = int64_t{1} << 20;
template <typename T>
constexpr int64_t panel_cols() {
  return kPanelBytes / static_cast<int64_t>(sizeof(T));
}
// The panel width (ldp) of a weight with n columns.
template <typename T>
constexpr int64_t packed_width(int64_t n) {
  return n >= panel_cols<T>() ? panel_cols<T>() : (n + kPackAlign - 1) / kPackAlign * kPackAlign;
}
// Entries of W packed with n columns and k rows.
template <typename T>
constexpr int64_t packed_size(int64_t n, int64_t k) {
  const int64_t pw = packed_width<T>(n);
  return pw == 0 ? 0 : (n + pw - 1) / pw * pw * k;
}

// RNNEXT_CPU_POISON set (read once): the CPU path fills the memory it allocates uninitialised
// (AlignedBuffer, its scratch, its outputs and a bidirectional layer's, stack.cpp) with NaN first,
// so that a test sees any entry read before it is written (tests/test_kernels_cpu.py).
inline bool poison_memory() {
  static const bool on = std::getenv("RNNEXT_CPU_POISON") != nullptr;
  return on;
}

// Memory for AlignedBuffer: on a 64-byte boundary; from kHugeBufferBytes (16 MB, kernels.cpp) on a
// 2 MB boundary, asking Linux for transparent huge pages (madvise): glibc maps a block of 32 MB or
// more afresh at every call, and its first touch faulted in 8192 pages of 4 KB for 32 MB where THP
// is "madvise" (NOTES.md section 97).
void* aligned_buffer(size_t bytes);
void free_aligned_buffer(void* p, size_t bytes);

// An uninitialised array on a 64-byte boundary, for packed weights and scratch rows the kernels
// load whole vectors from: malloc aligns to 16 bytes (large blocks sit 16 bytes past a page), and
// a 64-byte load that straddles two cache lines costs two (NOTES.md section 38). Every user writes
// what it reads (the packing writes whole panels, padding included; a ring's rows are made before
// the next step reads them): zero-filling the buffers a call packs into cost 1-7% of short calls
// (section 74).
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t n)
      : bytes_(static_cast<size_t>(n) * sizeof(T)), data_(static_cast<T*>(aligned_buffer(bytes_))) {
    if (poison_memory()) std::fill(data_, data_ + n, std::numeric_limits<T>::quiet_NaN());
  }
  ~AlignedBuffer() { free_aligned_buffer(data_, bytes_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() const { return data_; }

 private:
  size_t bytes_;
  T* data_;
};

// What a call ends with (A P: the products' sum, S: the start; StepArgs).
enum class Epilogue : int {
  kNone = 0,     // C = S + A P
  kTanh = 1,     // C = tanh(S + A P)
  kRelu = 2,     // C = relu(S + A P)
  kTanhBwd = 3,  // C = (S + A P) * (1 - aux^2)     aux: [rows, ldc], the forward's h
  kReluBwd = 4,  // C = aux <= 0 ? 0 : S + A P   (a NaN aux passes, as torch's threshold_backward)
  kZero = 5,     // C = S + A P with S = zero unless init is set (C is not read)
};

// One product of a step: A [rows, k] (row stride lda; column-major, A[r, q] = a[q * lda + r], for
// step_cm) times P, packed as above with kp rows a panel (its k when packed; the first k are read).
template <typename T>
struct Product {
  const T* a = nullptr;
  int64_t lda = 0;
  const T* p = nullptr;
  int64_t kp = 0;
  int64_t k = 0;  // 0: no product
};

// One kernel call: rows r < rows, columns 0..n of C (row stride ldc).
template <typename T>
struct StepArgs {
  int64_t rows = 0, n = 0;
  int64_t ldp = 0;  // both products' panel width (packed_width of n)
  Product<T> first, second;
  // The start S: init's rows (row stride ld_init; 0: init is one row, every row's start, a bias)
  // when init is set; else zero with Epilogue::kZero; else C itself.
  const T* init = nullptr;
  int64_t ld_init = 0;
  T* c = nullptr;
  int64_t ldc = 0;
  T* copy = nullptr;       // when set, the result is stored here too (row stride ld_copy)
  int64_t ld_copy = 0;     // 0: ldc
  const T* aux = nullptr;  // kTanhBwd / kReluBwd: the forward's h (row stride ldc)
  // When set, each column's sum over the rows of the result is added here (n entries): the bias
  // gradient, summed where the backward's dpre rows are made.
  T* sums = nullptr;
  Epilogue ep = Epilogue::kNone;
  // k rows of P a pass over the row blocks (0: kChunkRows). Longer chunks read P from L2 rather
  // than L1 but load and store C that many times fewer (long_chunk_rows below).
  int64_t chunk_rows = 0;
  // C's rows lie past L2 (a large GEMM's): each row block asks for the next one's rows of C while
  // it computes, so that their trips at every k chunk do not wait on memory.
  bool c_far = false;
  // Memory the call prefetches into L2 as it goes (a line every k iteration of a block's first
  // product, spread over all its blocks): the next call's operands, while this one computes.
  const void* prefetch[2] = {nullptr, nullptr};
  int64_t prefetch_bytes[2] = {0, 0};

  // A call of one product, started from C (or zero with kZero), no copy or aux: the GEMMs.
  static StepArgs one(int64_t rows, int64_t n, int64_t ldp, const Product<T>& first, T* c,
                      int64_t ldc, Epilogue ep) {
    StepArgs s;
    s.rows = rows;
    s.n = n;
    s.ldp = ldp;
    s.first = first;
    s.c = c;
    s.ldc = ldc;
    s.ep = ep;
    return s;
  }
};

template <typename T>
using StepKernel = void (*)(const StepArgs<T>&);

// The best kernel this CPU runs (RNNEXT_CPU_ISA=avx512|avx2|base in the environment overrides
// it), for A row-major or, with a_col_major, column-major (step_cm below). float and double.
template <typename T>
StepKernel<T> step_kernel(bool a_col_major = false);
const char* step_kernel_isa();

// The k chunk of the GEMMs over all rows (gemm.cpp: own_gemm_rows, and own_gemm_tn where a task's
// C is past L2) and of the steps whose W_hh is past L2 (rnn_core.h): 4 x kChunkRows on CPUs whose
// L2 feeds P's chunk to the kernel at its FMA rate, else kChunkRows (kernels.cpp);
// RNNEXT_CPU_LONG_CHUNKS=1 or 0 in the environment sets it either way (tests).
int64_t long_chunk_rows();

// Each instruction set's entry points (absent ones are never called: see kernels.cpp): step reads
// A row-major, step_cm column-major (A[r, q] = a[q * lda + r]; the weight gradients' dpre^T).
#define RNNEXT_DECLARE_ISA(isa)                                                              \
  namespace isa {                                                                            \
  void step(const StepArgs<float>&);                                                         \
  void step(const StepArgs<double>&);                                                        \
  void step_cm(const StepArgs<float>&);                                                      \
  void step_cm(const StepArgs<double>&);                                                     \
  void pack_t(const float*, int64_t, int64_t, int64_t, float*, int64_t, int64_t, int64_t);    \
  void pack_t(const double*, int64_t, int64_t, int64_t, double*, int64_t, int64_t, int64_t);  \
  void gemv_t(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, bool,   \
              float*, int64_t);                                                                \
  void gemv_t(int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t, bool, \
              double*, int64_t);                                                               \
  }
RNNEXT_DECLARE_ISA(base)
RNNEXT_DECLARE_ISA(avx2)
RNNEXT_DECLARE_ISA(avx512)
#undef RNNEXT_DECLARE_ISA

// Defines those entry points in an instruction set's translation unit, from its traits (after
// kernel_impl.h): RNNEXT_DEFINE_ISA(F32, F64).
#define RNNEXT_DEFINE_ISA_ONE(name, V, ACM) \
  void name(const StepArgs<V::T>& s) { step_impl<V, ACM>(s); }
#define RNNEXT_DEFINE_PACK_T(V)                                                             \
  void pack_t(const V::T* w, int64_t ldw, int64_t n, int64_t k, V::T* p, int64_t col_begin,   \
              int64_t col_end, int64_t pc) {                                                  \
    pack_t_impl<V>(w, ldw, n, k, p, col_begin, col_end, pc);                                  \
  }
#define RNNEXT_DEFINE_GEMV_T(V)                                                               \
  void gemv_t(int64_t rows, int64_t n, int64_t k, const V::T* a, int64_t lda, const V::T* w,     \
              int64_t ldw, bool accumulate, V::T* c, int64_t ldc) {                             \
    gemv_t_impl<V>(rows, n, k, a, lda, w, ldw, accumulate, c, ldc);                             \
  }
#define RNNEXT_DEFINE_ISA(F32, F64)         \
  RNNEXT_DEFINE_ISA_ONE(step, F32, false)    \
  RNNEXT_DEFINE_ISA_ONE(step, F64, false)    \
  RNNEXT_DEFINE_ISA_ONE(step_cm, F32, true)  \
  RNNEXT_DEFINE_ISA_ONE(step_cm, F64, true)  \
  RNNEXT_DEFINE_PACK_T(F32)                  \
  RNNEXT_DEFINE_PACK_T(F64)                  \
  RNNEXT_DEFINE_GEMV_T(F32)                  \
  RNNEXT_DEFINE_GEMV_T(F64)

// The matrix-vector kernel of the chosen instruction set: C[r, j] = (C[r, j] +) sum_q A[r, q] W[j, q]
// for r < rows, j < n (accumulate: add to C, else overwrite it); A [rows, k] and W [n, k]
// row-major with row strides lda and ldw, C with ldc. A forward step's recurrent product h W_hh^T
// on W_hh itself, for the few rows where packing W_hh each call costs more than the packed
// micro-kernel saves (Plan::own_matvec, plan.h). One row at a time: W is read once a row.
template <typename T>
using GemvKernel = void (*)(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda,
                            const T* w, int64_t ldw, bool accumulate, T* c, int64_t ldc);
template <typename T>
GemvKernel<T> gemv_kernel();

// The transposing case of pack_weight, in the chosen instruction set (a tile transposed in
// registers at a time), with panels of pc columns (a multiple of kPackAlign).
template <typename T>
void pack_transposed(const T* w, int64_t ldw, int64_t n, int64_t k, T* p, int64_t col_begin,
                     int64_t col_end, int64_t pc);

// A transposed into rows: out[r * ld + q] = a[q * lda + r] for r < rows and q < k, zero for
// k <= q < ld (ld a multiple of kPackAlign, at least k): pack_transposed's one panel of ld columns.
template <typename T>
void transpose_rows(const T* a, int64_t lda, int64_t k, int64_t rows, T* out, int64_t ld) {
  pack_transposed<T>(a, lda, k, rows, out, 0, k, ld);
}

// Packs W for the kernel into p (packed_size<T>(n, k) entries): P[q, j] = W[j, q] (transpose; W is
// [n, k]) or W[q, j] (W is [k, n]) for j < n, zero for the padding columns of the last panel.
// ldw is W's row stride. Only the panels holding columns [col_begin, col_end) when given (col_begin
// a panel boundary): each thread of a column split packs its own.
template <typename T>
void pack_weight(const T* w, int64_t ldw, int64_t n, int64_t k, bool transpose, T* p,
                 int64_t col_begin = 0, int64_t col_end = INT64_MAX) {
  if (transpose) {
    return pack_transposed<T>(w, ldw, n, k, p, col_begin, col_end, packed_width<T>(n));
  }
  const int64_t PC = packed_width<T>(n);
  for (int64_t j0 = col_begin; j0 < n && j0 < col_end; j0 += PC) {
    const int64_t cols = n - j0 < PC ? n - j0 : PC;
    T* panel = p + (j0 / PC) * k * PC;
    for (int64_t q = 0; q < k; ++q) {
      for (int64_t j = 0; j < cols; ++j) panel[q * PC + j] = w[q * ldw + j0 + j];
      for (int64_t j = cols; j < PC; ++j) panel[q * PC + j] = T(0);
    }
  }
}

}  // namespace cpu
}  // namespace rnnext
