// Framework-free CPU core of the Elman recurrence: raw pointers and sizes, no allocation.
// The glue (rnn_cpu.cpp) checks arguments, allocates, and runs the large GEMMs around it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "blas.h"

namespace rnnext {
namespace cpu {

// One layer, one direction. Row r of a step is batch entry r; step t's rows start at offsets[t].
template <typename T>
struct Recurrence {
  int64_t steps;                 // T
  int64_t hidden;                // H
  const int64_t* batch_sizes;    // [T], non-increasing
  const int64_t* offsets;        // [T + 1]
  const T* w_hh;                 // [H, H], contiguous
  const T* hx;                   // [B, H] or nullptr (zeros)
  bool relu;
  bool reverse;

  int64_t bs(int64_t t) const { return (t >= 0 && t < steps) ? batch_sizes[t] : 0; }
  T* rows(T* base, int64_t t) const { return base + offsets[t] * hidden; }
  const T* rows(const T* base, int64_t t) const { return base + offsets[t] * hidden; }

  // The step processed just before t, and how many of t's rows continue from it (the rest start
  // from hx): forward continues from t-1 (all rows), reverse from t+1 (its batch size).
  int64_t prev_step(int64_t t) const { return reverse ? t + 1 : t - 1; }
  int64_t carried_rows(int64_t t) const { return reverse ? bs(t + 1) : (t > 0 ? bs(t) : 0); }

  // out holds x_t W_ih^T + biases on entry; on return it holds h_t for every step. h_n: [B, H].
  void forward(T* out, T* h_n) const {
    const int64_t H = hidden;
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = reverse ? steps - 1 - i : i;
      const int64_t n = bs(t), carried = carried_rows(t);
      T* cur = rows(out, t);
      if (carried > 0) {
        gemm_rows(true, carried, H, H, rows(static_cast<const T*>(out), prev_step(t)), H, w_hh, H,
                  T(1), cur, H);
      }
      if (hx != nullptr && n > carried) {
        gemm_rows(true, n - carried, H, H, hx + carried * H, H, w_hh, H, T(1), cur + carried * H,
                  H);
      }
      activate(cur, n * H);
      // Rows whose sequence ends here: forward, those absent at t+1; reverse, all rows at t = 0.
      const int64_t done_from = reverse ? (t == 0 ? 0 : n) : bs(t + 1);
      if (n > done_from) {
        std::memcpy(h_n + done_from * H, cur + done_from * H, (n - done_from) * H * sizeof(T));
      }
    }
  }

  // dpre[N, H] receives dL/d(pre-activation) of every row. grad_out: [N, H]; grad_h_n: [B, H] or
  // nullptr; out: the forward's output. grad_hx: [B, H] or nullptr (not wanted).
  void backward(const T* grad_out, const T* grad_h_n, const T* out, T* dpre, T* grad_hx) const {
    const int64_t H = hidden;
    for (int64_t i = 0; i < steps; ++i) {
      // Undo the forward order: forward ran 0..T-1, so the backward runs T-1..0, and vice versa.
      const int64_t t = reverse ? i : steps - 1 - i;
      const int64_t n = bs(t);
      T* cur = rows(dpre, t);
      std::memcpy(cur, rows(grad_out, t), n * H * sizeof(T));
      // The step that consumed h_t: t+1 (forward) or t-1 (reverse). Its rows feed back via w_hh.
      const int64_t next = reverse ? t - 1 : t + 1;
      const int64_t fed = reverse ? (t > 0 ? n : 0) : bs(t + 1);
      if (fed > 0) {
        gemm_rows(false, fed, H, H, rows(static_cast<const T*>(dpre), next), H, w_hh, H, T(1), cur,
                  H);
      }
      // Rows whose h_t is the final state receive grad_h_n.
      const int64_t final_from = reverse ? (t == 0 ? 0 : n) : fed;
      if (grad_h_n != nullptr) {
        for (int64_t j = final_from * H; j < n * H; ++j) cur[j] += grad_h_n[j];
      }
      activate_backward(cur, rows(out, t), n * H);
      // Rows that started from hx at this step pass their gradient to grad_hx.
      if (grad_hx != nullptr) {
        const int64_t carried = carried_rows(t);
        if (n > carried) {
          gemm_rows(false, n - carried, H, H, cur + carried * H, H, w_hh, H, T(0),
                    grad_hx + carried * H, H);
        }
      }
    }
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

 private:
  void activate(T* x, int64_t n) const {
    if (relu) {
      for (int64_t j = 0; j < n; ++j) x[j] = x[j] < T(0) ? T(0) : x[j];  // NaN passes
    } else {
      for (int64_t j = 0; j < n; ++j) x[j] = std::tanh(x[j]);
    }
  }
  void activate_backward(T* g, const T* h, int64_t n) const {
    if (relu) {
      // As torch (threshold_backward on the result): zero where h <= 0, so a NaN h passes g.
      for (int64_t j = 0; j < n; ++j) g[j] = h[j] <= T(0) ? T(0) : g[j];
    } else {
      for (int64_t j = 0; j < n; ++j) g[j] *= T(1) - h[j] * h[j];
    }
  }
};

}  // namespace cpu
}  // namespace rnnext
