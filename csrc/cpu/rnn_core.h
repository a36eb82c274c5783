// Framework-free CPU core of the Elman recurrence: raw pointers and sizes, no allocation.
// The glue (rnn_cpu.cpp) checks arguments, allocates, packs W_hh, runs the large GEMMs around the
// recurrence, and splits the batch rows between threads (rows never interact, so a thread runs the
// whole time loop over its own rows with no synchronisation).
#pragma once

#include <cstdint>
#include <cstring>

#include "blas.h"
#include "kernels.h"

namespace rnnext {
namespace cpu {

// One layer, one direction, over the batch rows [row_begin, row_end). Row r of a step is batch
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
  int64_t row_begin = 0;
  int64_t row_end = INT64_MAX;

  int64_t bs(int64_t t) const { return (t >= 0 && t < steps) ? batch_sizes[t] : 0; }
  T* rows(T* base, int64_t t) const { return base + offsets[t] * hidden; }
  const T* rows(const T* base, int64_t t) const { return base + offsets[t] * hidden; }
  int64_t clip(int64_t r) const { return r < row_begin ? row_begin : (r > row_end ? row_end : r); }

  // The step processed just before t, and how many of t's rows continue from it (the rest start
  // from hx): forward continues from t-1 (all rows), reverse from t+1 (its batch size).
  int64_t prev_step(int64_t t) const { return reverse ? t + 1 : t - 1; }
  int64_t carried_rows(int64_t t) const { return reverse ? bs(t + 1) : (t > 0 ? bs(t) : 0); }

  // out holds x_t W_ih^T + biases on entry (unless x is set); on return it holds h_t for every
  // step. h_n: [B, H].
  void forward(T* out, T* h_n) const {
    const int64_t H = hidden;
    const Epilogue ep = relu ? Epilogue::kRelu : Epilogue::kTanh;
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = reverse ? steps - 1 - i : i;
      const int64_t n = clip(bs(t)), carried = clip(carried_rows(t)), r0 = row_begin;
      if (n <= r0) continue;
      T* cur = rows(out, t);
      if (x != nullptr) {  // this slice's rows of x_t W_ih^T + b_ih + b_hh
        for (int64_t r = r0; r < n; ++r) std::memcpy(cur + r * H, bias, H * sizeof(T));
        kernel(n - r0, H, inputs, x + (offsets[t] + r0) * ldx, ldx, w_ih_packed, inputs,
               cur + r0 * H, H, nullptr, Epilogue::kNone);
      }
      if (carried > r0) {
        product(true, carried - r0, H, rows(static_cast<const T*>(out), prev_step(t)) + r0 * H,
                cur + r0 * H, nullptr, ep);
      }
      const int64_t fresh = carried > r0 ? carried : r0;
      if (n > fresh) {  // rows starting here: from hx, or from zeros (activation only)
        product(true, n - fresh, hx != nullptr ? H : 0, hx != nullptr ? hx + fresh * H : nullptr,
                cur + fresh * H, nullptr, ep);
      }
      // Rows whose sequence ends here: forward, those absent at t+1; reverse, all rows at t = 0.
      const int64_t done_from = reverse ? (t == 0 ? r0 : n) : clip(bs(t + 1));
      if (n > done_from) {
        std::memcpy(h_n + done_from * H, cur + done_from * H, (n - done_from) * H * sizeof(T));
      }
    }
  }

  // dpre[N, H] receives dL/d(pre-activation) of every row. grad_out: [N, H]; grad_h_n: [B, H] or
  // nullptr; out: the forward's output. grad_hx: [B, H] or nullptr (not wanted).
  void backward(const T* grad_out, const T* grad_h_n, const T* out, T* dpre, T* grad_hx) const {
    const int64_t H = hidden;
    const Epilogue ep = relu ? Epilogue::kReluBwd : Epilogue::kTanhBwd;
    for (int64_t i = 0; i < steps; ++i) {
      // Undo the forward order: forward ran 0..T-1, so the backward runs T-1..0, and vice versa.
      const int64_t t = reverse ? i : steps - 1 - i;
      const int64_t n = clip(bs(t)), r0 = row_begin;
      if (n <= r0) continue;
      T* cur = rows(dpre, t);
      const T* h = rows(out, t);
      std::memcpy(cur + r0 * H, rows(grad_out, t) + r0 * H, (n - r0) * H * sizeof(T));
      // The step that consumed h_t: t+1 (forward) or t-1 (reverse). Its rows feed back via w_hh.
      const int64_t next = reverse ? t - 1 : t + 1;
      const int64_t fed = clip(reverse ? (t > 0 ? bs(t) : 0) : bs(t + 1));
      if (fed > r0) {
        product(false, fed - r0, H, rows(static_cast<const T*>(dpre), next) + r0 * H, cur + r0 * H,
                h + r0 * H, ep);
      }
      // The other rows hold their final state here and receive grad_h_n (fed is r0 or n in reverse).
      const int64_t final_from = fed > r0 ? fed : r0;
      if (n > final_from) {
        if (grad_h_n != nullptr) {
          for (int64_t j = final_from * H; j < n * H; ++j) cur[j] += grad_h_n[j];
        }
        product(false, n - final_from, 0, nullptr, cur + final_from * H, h + final_from * H, ep);
      }
      if (grad_x != nullptr) {
        T* gx = grad_x + (offsets[t] + r0) * inputs;
        if (w_ih_blas != nullptr) {
          gemm_rows(false, n - r0, inputs, H, cur + r0 * H, H, w_ih_blas, ldw_ih, T(0), gx, inputs);
        } else {
          kernel(n - r0, inputs, H, cur + r0 * H, H, w_ih_plain, H, gx, inputs, nullptr,
                 Epilogue::kZero);
        }
      }
      // Rows that started from hx at this step pass their gradient to grad_hx.
      if (grad_hx != nullptr) {
        const int64_t carried = clip(carried_rows(t));
        const int64_t from = carried > r0 ? carried : r0;
        if (n > from) {
          product(false, n - from, H, cur + from * H, grad_hx + from * H, nullptr, Epilogue::kZero);
        }
      }
    }
  }

  // C[rows, H] = epilogue(C + A op(W_hh)), op = transpose (forward) or identity (backward); all
  // row strides H. k = 0: the epilogue alone. In the micro-kernel, or BLAS then the epilogue.
  void product(bool transpose, int64_t nrows, int64_t k, const T* a, T* c, const T* aux,
               Epilogue ep) const {
    const int64_t H = hidden;
    if (w_blas != nullptr && k > 0) {
      const bool zero = ep == Epilogue::kZero;
      gemm_rows(transpose, nrows, H, H, a, H, w_blas, H, zero ? T(0) : T(1), c, H);
      if (zero || ep == Epilogue::kNone) return;
      k = 0;
    }
    kernel(nrows, H, k, a, H, w_packed, H, c, H, aux, ep);
  }

  // h_prev[N, H]: for every row, the state it started from (hx or zeros at a sequence's start).
  void gather_prev(const T* out, T* h_prev) const {
    const int64_t H = hidden;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = bs(t), carried = carried_rows(t);
      T* dst = rows(h_prev, t);
      if (carried > 0) {
        std::memcpy(dst, rows(out, prev_step(t)), carried * H * sizeof(T));
      }
      if (n > carried) {
        if (hx != nullptr) {
          std::memcpy(dst + carried * H, hx + carried * H, (n - carried) * H * sizeof(T));
        } else {
          std::memset(dst + carried * H, 0, (n - carried) * H * sizeof(T));
        }
      }
    }
  }
};

}  // namespace cpu
}  // namespace rnnext
