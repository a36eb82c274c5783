// Framework-free CPU core of the Elman recurrence: raw pointers and sizes, no allocation.
// The glue (rnn_cpu.cpp) checks arguments, allocates, packs W_hh, runs the large GEMMs around the
// recurrence, and splits the batch rows between threads (rows never interact, so a thread runs the
// whole time loop over its own rows with no synchronisation).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>

#include "blas.h"
#include "kernels.h"

namespace rnnext {
namespace cpu {

// A barrier for the threads of one parallel region that split a step's hidden columns: spins
// (pause) for a short while, then yields, so a thread the OS has descheduled (a shared machine)
// does not cost its partner a whole time slice of spinning. Every participant must call wait()
// equally often.
class SpinBarrier {
 public:
  explicit SpinBarrier(int participants) : n_(participants) {}
  void wait() {
    if (n_ <= 1) return;
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 20000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// One layer, one direction, over the batch rows [row_begin, row_end) and the hidden columns
// [col_begin, col_end) (whole packed panels; every row when columns are split, with a barrier
// after each step, since a step reads all columns of the step before it). Row r of a step is batch
// entry r; step t's rows start at offsets[t].
template <typename T>
struct Recurrence {
  int64_t steps;                 // T
  int64_t hidden;                // H
  const int64_t* batch_sizes;    // [T], non-increasing
  const int64_t* offsets;        // [T + 1]
  const T* w_packed;             // W_hh^T for forward, W_hh for backward (pack_weight, k = H)
  const T* hx;                   // [B, H] or nullptr (zeros)
  bool relu;
  bool reverse;
  StepKernel<T> kernel;
  const T* w_blas = nullptr;     // [H, H] W_hh itself: when set, the products run in BLAS (large H)
  // With w_blas, the forward's products in this matrix-vector kernel instead (Plan::own_matvec).
  GemvKernel<T> gemv = nullptr;
  // When x is set, forward() computes each step's input projection itself (else `out` holds it on
  // entry): x [N, inputs] with row stride ldx; w_ih_packed: W_ih^T packed (k = inputs); bias:
  // b_ih + b_hh [H].
  const T* x = nullptr;
  int64_t ldx = 0;
  int64_t inputs = 0;
  const T* w_ih_packed = nullptr;
  const T* bias = nullptr;
  // backward() only: W_ih itself [H, inputs] (row stride ldw_ih) for grad_x in BLAS, in place of
  // w_ih_plain (few steps, where packing costs more than it saves).
  const T* w_ih_blas = nullptr;
  int64_t ldw_ih = 0;
  // When grad_x is set, backward() also computes grad_input = dpre W_ih for its rows at each
  // step: grad_x [N, inputs] contiguous; w_ih_plain: W_ih packed as is (n = inputs, k = H).
  T* grad_x = nullptr;
  const T* w_ih_plain = nullptr;
  // When set, backward() adds the column sums of the dpre rows it makes here ([H]; this thread's
  // rows and columns): the bias gradient, taken in the epilogue that makes the rows.
  T* grad_bias = nullptr;
  int64_t row_begin = 0;
  int64_t row_end = INT64_MAX;
  int64_t col_begin = 0;            // multiples of panel_cols<T>(); col_end is clipped to H
  int64_t col_end = INT64_MAX;
  SpinBarrier* barrier = nullptr;   // set when the columns are split between threads
  // forward()'s `out`: its row stride (0: H). Another stride (a bidirectional layer's half of a
  // [*, 2H] output) only with a ring (the rows split, or one thread).
  int64_t ld_out = 0;

  int64_t bs(int64_t t) const { return (t >= 0 && t < steps) ? batch_sizes[t] : 0; }
  T* rows(T* base, int64_t t) const { return base + offsets[t] * hidden; }
  const T* rows(const T* base, int64_t t) const { return base + offsets[t] * hidden; }
  int64_t clip(int64_t r) const { return r < row_begin ? row_begin : (r > row_end ? row_end : r); }
  int64_t c0() const { return col_begin; }
  int64_t c1() const { return col_end < hidden ? col_end : hidden; }
  // Offset of column c (a panel boundary) in a weight of n columns packed with k rows.
  static int64_t panel_offset(int64_t c, int64_t n, int64_t k) {
    return c == 0 ? 0 : c / packed_width<T>(n) * k * packed_width<T>(n);
  }
  int64_t ldo() const { return ld_out != 0 ? ld_out : hidden; }
  // rows [r0, r1) of a step's [*, H] block, this thread's columns only (dst's row stride H, src's
  // ls: 0 repeats one row)
  void copy_cols(T* dst, const T* src, int64_t r0, int64_t r1, int64_t ls) const {
    const int64_t H = hidden, a = c0(), w = c1() - c0();
    if (a == 0 && w == H && ls == H) {
      std::memcpy(dst + r0 * H, src + r0 * H, (r1 - r0) * H * sizeof(T));
      return;
    }
    for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * H + a, src + r * ls + a, w * sizeof(T));
  }

  // The step processed just before t, and how many of t's rows continue from it (the rest start
  // from hx): forward continues from t-1 (all rows), reverse from t+1 (its batch size).
  int64_t prev_step(int64_t t) const { return reverse ? t + 1 : t - 1; }
  int64_t carried_rows(int64_t t) const { return reverse ? bs(t + 1) : (t > 0 ? bs(t) : 0); }

  // out holds x_t W_ih^T + biases on entry (unless x is set); on return it holds h_t for every
  // step. h_n: [B, H].
  //
  // With the rows split (no barrier), a thread builds each step's rows in a private two-step ring
  // (`ring`: 2 (row_end - row_begin) H entries, its rows only) and writes them to `out` once,
  // when final: out's rows of neighbouring threads share cache lines' neighbourhoods, and the
  // several read-modify-write passes of a step (bias, projection, recurrent product, activation)
  // on shared memory cost cross-core traffic where the cores share no cache (NOTES.md section 31).
  void forward(T* out, T* h_n, T* ring = nullptr) const {
    const int64_t H = hidden, a = c0(), w = c1() - c0(), lo = ldo();
    const Epilogue ep = relu ? Epilogue::kRelu : Epilogue::kTanh;
    const int64_t r0 = row_begin;
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = reverse ? steps - 1 - i : i;
      const int64_t n = clip(bs(t)), carried = clip(carried_rows(t));
      if (n > r0 && w > 0) {
        // cur / prev: row r0 of this step / of the step before (ring, rows H apart, or out, rows
        // lo apart; lo = H without a ring).
        T* shared = out + (offsets[t] + r0) * lo;
        T* cur = ring != nullptr ? ring + (i % 2) * (row_end - r0) * H : shared;
        // (prev is read only when rows carry over: at the first step there is no step before.)
        const T* prev = ring != nullptr ? ring + ((i + 1) % 2) * (row_end - r0) * H
                        : carried > r0  ? rows(static_cast<const T*>(out), prev_step(t)) + r0 * H
                                        : nullptr;
        // A row's start: b_ih + b_hh when the input product runs here, else out's row (it holds the
        // projection on entry). Built in cur in one pass; out's rows get the result too when cur
        // is the ring.
        const T* init = x != nullptr ? bias : (cur != shared ? shared : nullptr);
        const int64_t ld_init = x != nullptr ? 0 : lo;
        T* copy = cur != shared ? shared : nullptr;
        const auto input = [&](int64_t from) {  // x_t W_ih^T of the rows r0 + from..
          Product<T> pr;
          if (x != nullptr) {
            pr = {x + (offsets[t] + r0 + from) * ldx, ldx, w_ih_packed + panel_offset(a, H, inputs),
                  inputs, inputs};
          }
          return pr;
        };
        if (carried > r0) {
          run(true, carried - r0, input(0), H, prev, init, ld_init, cur, copy, nullptr, ep, lo);
        }
        const int64_t fresh = carried > r0 ? carried : r0;
        if (n > fresh) {  // rows starting here: from hx, or from zeros (no recurrent product)
          const int64_t off = fresh - r0;
          run(true, n - fresh, input(off), hx != nullptr ? H : 0,
              hx != nullptr ? hx + fresh * H : nullptr, init ? init + off * ld_init : init, ld_init,
              cur + off * H, copy ? copy + off * lo : copy, nullptr, ep, lo);
        }
        // Rows whose sequence ends here: forward, those absent at t+1; reverse, all rows at t = 0.
        const int64_t done_from = reverse ? (t == 0 ? r0 : n) : clip(bs(t + 1));
        if (n > done_from) copy_cols(h_n, shared - r0 * lo, done_from, n, lo);
      }
      if (barrier != nullptr) barrier->wait();
    }
  }

  // dpre[N, H] receives dL/d(pre-activation) of every row. grad_out: N rows of H, row stride
  // ld_grad (H; 0 for one row repeated: the expanded gradient of `output.sum()`; 2H for a
  // direction's half of a bidirectional layer's gradient); grad_h_n: [B, H] or nullptr; out: the
  // forward's output. grad_hx: [B, H] or nullptr (not wanted). ring: as in forward(), the rows of
  // dpre built privately and written to dpre once per step.
  void backward(const T* grad_out, int64_t ld_grad, const T* grad_h_n, const T* out, T* dpre,
                T* grad_hx, T* ring = nullptr) const {
    const int64_t H = hidden, a = c0(), w = c1() - c0();
    const Epilogue ep = relu ? Epilogue::kReluBwd : Epilogue::kTanhBwd;
    const int64_t r0 = row_begin;
    for (int64_t i = 0; i < steps; ++i) {
      // Undo the forward order: forward ran 0..T-1, so the backward runs T-1..0, and vice versa.
      const int64_t t = reverse ? i : steps - 1 - i;
      const int64_t n = clip(bs(t));
      // cur / next: row r0 of dpre at this step / at the step processed before (the one that
      // consumed h_t: t+1 forward, t-1 reverse), in the ring or in dpre.
      T* shared = rows(dpre, t) + r0 * H;
      T* cur = ring != nullptr ? ring + (i % 2) * (row_end - r0) * H : shared;
      if (n > r0 && w > 0) {
        const T* h = rows(out, t) + r0 * H;
        const T* g = grad_out + (offsets[t] + r0) * ld_grad;
        T* copy = cur != shared ? shared : nullptr;  // dpre's rows get the result too (ring)
        const int64_t next = reverse ? t - 1 : t + 1;
        const int64_t fed = clip(reverse ? (t > 0 ? bs(t) : 0) : bs(t + 1));
        const T* fed_rows = ring != nullptr ? ring + ((i + 1) % 2) * (row_end - r0) * H
                            : fed > r0      ? rows(static_cast<const T*>(dpre), next) + r0 * H
                                            : nullptr;
        // The rows of h and (where contiguous) grad_out of the step processed after this one,
        // brought into L2 during this step: they come from L3, and each row block's start and
        // epilogue wait on them (NOTES.md section 73). Whole rows only (not a column share).
        const int64_t t_after = reverse ? t + 1 : t - 1, n_after = clip(bs(t_after));
        Fetch ahead;
        if (w == H && n_after > r0) {
          const int64_t bytes = (n_after - r0) * H * static_cast<int64_t>(sizeof(T));
          ahead = {{rows(out, t_after) + r0 * H, grad_out + (offsets[t_after] + r0) * ld_grad},
                   {bytes, ld_grad == H ? bytes : 0}};
        }
        // dpre_t = (grad_out_t + dpre_next W_hh) * act'(h_t), started from grad_out's rows.
        if (fed > r0) run(false, fed - r0, {}, H, fed_rows, g, ld_grad, cur, copy, h, ep, 0, ahead);
        // The other rows hold their final state here and receive grad_h_n (fed is r0 or n in
        // reverse).
        const int64_t final_from = fed > r0 ? fed : r0;
        if (n > final_from) {
          const int64_t off = final_from - r0;
          T* fin = cur + off * H;
          copy_cols(cur, g, off, n - r0, ld_grad);
          if (grad_h_n != nullptr) {
            const T* gh = grad_h_n + final_from * H;
            for (int64_t r = 0; r < n - final_from; ++r) {
              for (int64_t j = r * H + a; j < r * H + a + w; ++j) fin[j] += gh[j];
            }
          }
          run(false, n - final_from, {}, 0, nullptr, nullptr, 0, fin, copy ? copy + off * H : copy,
              h + off * H, ep);
        }
      }
      // grad_x reads whole rows of dpre_t (it is never set when the columns are split: the planner
      // then takes grad_input as one GEMM after the recurrence).
      if (grad_x != nullptr && n > r0) {
        T* gx = grad_x + (offsets[t] + r0) * inputs;
        if (w_ih_blas != nullptr) {
          gemm_rows(false, n - r0, inputs, H, cur, H, w_ih_blas, ldw_ih, T(0), gx, inputs);
        } else {
          kernel(StepArgs<T>::one(n - r0, inputs, packed_width<T>(inputs),
                                  {cur, H, w_ih_plain, H, H}, gx, inputs, Epilogue::kZero));
        }
      }
      // grad_hx reads whole rows of dpre_t too: with the columns split, only once every thread has
      // written its columns (each thread then writes its columns of grad_hx).
      if (barrier != nullptr) barrier->wait();
      if (n <= r0) continue;
      // Rows that started from hx at this step pass their gradient to grad_hx.
      if (grad_hx != nullptr && w > 0) {
        const int64_t carried = clip(carried_rows(t));
        const int64_t from = carried > r0 ? carried : r0;
        if (n > from) {
          run(false, n - from, {}, H, cur + (from - r0) * H, nullptr, 0, grad_hx + from * H,
              nullptr, nullptr, Epilogue::kZero);
        }
      }
    }
  }

  // Memory a step call prefetches into L2 as it goes (StepArgs::prefetch; 0 bytes: none).
  struct Fetch {
    const T* at[2] = {nullptr, nullptr};
    int64_t bytes[2] = {0, 0};
  };

  // Rows of c (row stride H), this thread's columns: c = ep(S + first + a op(W_hh)), the
  // recurrent product with k = H (0: none); S = init's rows (row stride ld_init; 0: one row) when
  // set, zero with kZero, else c itself; the result stored to copy too when set (row stride
  // ld_copy; 0 for H). op = transpose (forward: W_hh^T) or identity (backward). One micro-kernel
  // call, which prefetches `ahead` into L2 as it goes; with w_blas, the recurrent product in BLAS
  // (or the forward's in gemv) between a kernel call for the start and first product and one for
  // the epilogue.
  void run(bool transpose, int64_t nrows, const Product<T>& first, int64_t k, const T* a,
           const T* init, int64_t ld_init, T* c, T* copy, const T* aux, Epilogue ep,
           int64_t ld_copy = 0, const Fetch& ahead = {}) const {
    const int64_t H = hidden, c_0 = c0(), w = c1() - c0();
    StepArgs<T> s;
    s.rows = nrows;
    s.n = w;
    s.ldp = packed_width<T>(H);
    s.first = first;
    s.init = init != nullptr ? init + c_0 : init;
    s.ld_init = ld_init;
    s.c = c + c_0;
    s.ldc = H;
    s.copy = copy != nullptr ? copy + c_0 : copy;
    s.ld_copy = ld_copy;
    s.aux = aux != nullptr ? aux + c_0 : aux;
    s.ep = ep;
    const bool makes_dpre = ep == Epilogue::kTanhBwd || ep == Epilogue::kReluBwd;
    s.sums = grad_bias != nullptr && makes_dpre ? grad_bias + c_0 : nullptr;
    if (w_blas != nullptr && k > 0) {
      const bool zero = ep == Epilogue::kZero && first.k == 0 && init == nullptr;
      if (first.k > 0 || init != nullptr) {  // c = S + first
        StepArgs<T> pre = s;
        pre.copy = nullptr;
        pre.sums = nullptr;
        pre.ep = ep == Epilogue::kZero ? Epilogue::kZero : Epilogue::kNone;
        kernel(pre);
      }
      // op(W)'s columns c_0.. are W's rows c_0.. (forward, W^T) or its columns (backward).
      if (gemv != nullptr && transpose) {
        gemv(nrows, w, H, a, H, w_blas + c_0 * H, H, !zero, c + c_0, H);
      } else {
        gemm_rows(transpose, nrows, w, H, a, H, w_blas + (transpose ? c_0 * H : c_0), H,
                  zero ? T(0) : T(1), c + c_0, H);
      }
      if ((ep == Epilogue::kZero || ep == Epilogue::kNone) && copy == nullptr) return;
      s.first = {};
      s.init = nullptr;
      if (ep == Epilogue::kZero) s.ep = Epilogue::kNone;
      kernel(s);
      return;
    }
    s.second = {a, H, w_packed ? w_packed + panel_offset(c_0, H, H) : w_packed, H, k};
    for (int i = 0; i < 2; ++i) {
      s.prefetch[i] = ahead.bytes[i] > 0 ? ahead.at[i] : nullptr;
      s.prefetch_bytes[i] = ahead.bytes[i];
    }
    // W_hh past L2 comes from L3 at every step anyway: long k chunks, where the CPU takes them,
    // load and store the step's rows of C a quarter as often (NOTES.md section 87).
    if (H * H * static_cast<int64_t>(sizeof(T)) > kStreamWeightBytes) {
      s.chunk_rows = long_chunk_rows();
    }
    kernel(s);
  }

  // prev[N]: for every row, the row of state it started from: a row of out (the step before it),
  // of hx, or nullptr (zeros) at a sequence's start without hx. The W_hh gradient's B rows
  // (dpre^T h_prev), read where they are by own_gemm_tn, or gathered for the BLAS.
  void prev_rows(const T* out, const T** prev) const {
    const int64_t H = hidden;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = bs(t), carried = carried_rows(t);
      const T** dst = prev + offsets[t];
      const T* from = carried > 0 ? rows(out, prev_step(t)) : nullptr;
      for (int64_t r = 0; r < carried; ++r) dst[r] = from + r * H;
      for (int64_t r = carried; r < n; ++r) dst[r] = hx != nullptr ? hx + r * H : nullptr;
    }
  }
};

}  // namespace cpu
}  // namespace rnnext
