// CPU glue: checks arguments, asks the planner (plan.h) for the path, allocates outputs, packs the
// weights the path needs, runs the GEMMs over all rows (input projection, weight gradients) and
// the recurrence through the core in rnn_core.h.
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../rnn_common.h"
#include "gemm.h"
#include "plan.h"
#include "rnn_core.h"
#include "rnn_cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <utility>
#include <vector>

namespace rnnext {
namespace {

using at::Tensor;
using c10::optional;

// Uninitialised CPU memory without a dispatcher round trip (~0.3 us each at the tutorial shape);
// NaN with RNNEXT_CPU_POISON (cpu::poison_memory).
Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  Tensor t(at::detail::empty_cpu(sizes, dtype));
  cpu::poison(t);
  return t;
}

// The backward's internal rows (dpre, and h_prev for a ragged batch's W_hh gradient) in memory this
// thread keeps between calls, up to kKeepBytes: a fresh buffer of this size comes from mmap at
// every call (glibc's threshold) and its first touch faults in every page, ~1 ms a call for the
// 1.6 MB dpre of T=100 B=32 H=128 on these VMs, more than the backward recurrence itself
// (benchmarks/NOTES.md section 50). What is kept is the largest call's need, per thread that ran a
// backward; larger calls, and a call nested in another on the same thread, get fresh memory.
class Scratch {
 public:
  static constexpr int64_t kKeepBytes = int64_t{64} << 20;
  explicit Scratch(int64_t bytes) {
    Kept& k = kept();
    // (Nothing to keep for an empty call: holding the kept memory without any would leave it busy
    // for good, as the destructor releases only what it took.)
    if (bytes <= 0 || k.busy || bytes > kKeepBytes) return;
    if (k.bytes < bytes) {
      k.data.reset();
      k.data.reset(static_cast<char*>(::operator new(static_cast<size_t>(bytes), kAlign)));
      k.bytes = bytes;
    }
    k.busy = true;
    base_ = k.data.get();
  }
  ~Scratch() {
    if (base_ != nullptr) kept().busy = false;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // Bytes of every request: each tensor starts on a 64-byte boundary.
  static int64_t bytes_for(int64_t numel, at::ScalarType dtype) {
    return (numel * static_cast<int64_t>(c10::elementSize(dtype)) + 63) / 64 * 64;
  }
  // Uninitialised [rows, cols]: the kept memory's next part, or a fresh tensor.
  Tensor take(int64_t rows, int64_t cols, at::ScalarType dtype) {
    if (base_ == nullptr) return empty({rows, cols}, dtype);
    char* at = base_ + used_;
    used_ += bytes_for(rows * cols, dtype);
    Tensor t = at::from_blob(at, {rows, cols}, at::TensorOptions().dtype(dtype));
    cpu::poison(t);
    return t;
  }

 private:
  static constexpr std::align_val_t kAlign{64};
  struct Free {
    void operator()(char* p) const { ::operator delete(p, kAlign); }
  };
  struct Kept {
    std::unique_ptr<char, Free> data;
    int64_t bytes = 0;
    bool busy = false;
  };
  static Kept& kept() {
    thread_local Kept k;
    return k;
  }
  char* base_ = nullptr;
  int64_t used_ = 0;
};

// A 2-D tensor as a contiguous one: itself, or a strided copy made without the dispatcher (the
// grad_h_n of `cell(x, h).sum()` is a [B, H] expand of one element, strides 0).
Tensor dense_2d(const Tensor& t) {
  if (t.is_contiguous() || t.dim() != 2 || t.numel() == 0) return t.contiguous();
  Tensor d = empty(t.sizes(), t.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "rnnext_dense_2d", [&] {
    const scalar_t* src = t.data_ptr<scalar_t>();
    scalar_t* dst = d.data_ptr<scalar_t>();
    const int64_t rows = t.size(0), cols = t.size(1), s0 = t.stride(0), s1 = t.stride(1);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = src[r * s0 + c * s1];
    }
  });
  return d;
}

// Entries of an n-column, k-row weight packed for the micro-kernel (kernels.h), for this dtype.
int64_t packed_entries(int64_t n, int64_t k, at::ScalarType dtype) {
  return dtype == at::kDouble ? cpu::packed_size<double>(n, k) : cpu::packed_size<float>(n, k);
}

// b_ih + b_hh (either may be absent) into bias[0:H].
template <typename T>
void pack_bias(const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, int64_t H, T* bias) {
  for (int64_t j = 0; j < H; ++j) bias[j] = T(0);
  for (const auto* b : {&b_ih, &b_hh}) {
    if (b->has_value()) {
      const T* bp = (*b)->template data_ptr<T>();
      const int64_t st = (*b)->stride(0);
      for (int64_t j = 0; j < H; ++j) bias[j] += bp[j * st];
    }
  }
}

// Packs W_ih^T into p (packed_size(H, I) entries) and the summed bias [H] after it.
template <typename T>
void pack_projection(const Tensor& w_ih, const optional<Tensor>& b_ih,
                     const optional<Tensor>& b_hh, T* p) {
  const int64_t I = w_ih.size(1), H = w_ih.size(0);
  cpu::pack_weight<T>(w_ih.data_ptr<T>(), w_ih.stride(0), H, I, /*transpose=*/true, p);
  pack_bias<T>(b_ih, b_hh, H, p + cpu::packed_size<T>(H, I));
}

// The N rows of a [T, B, C] or [N, C] tensor as one matrix: (t, row stride), read in place where
// the stride between rows is uniform and at least min_ld (a 2-D tensor, or [T, B, C] whose steps
// follow each other: padded, batch_first too when B = 1, a direction's half of a [T, B, 2H]
// gradient), else a contiguous copy (row stride C). With min_ld = 0, rows that are all one row (an
// expand: the gradient of `output.sum()`) give that row alone, stride 0.
std::pair<Tensor, int64_t> uniform_rows(const Tensor& t, const Geometry& g, int64_t min_ld) {
  const int64_t cols = t.size(-1);
  const bool as_geometry = t.dim() == 2   ? t.size(0) == g.N
                           : t.dim() == 3 ? !g.packed && t.size(0) == g.T && t.size(1) == g.B
                                          : false;
  if (as_geometry) {
    const bool uniform = t.dim() == 2 || g.B == 1 || t.stride(0) == g.B * t.stride(1);
    const int64_t ld = t.dim() == 2 || g.B == 1 ? t.stride(0) : t.stride(1);
    if (uniform && t.stride(-1) == 1) {
      if (ld >= min_ld) return {t, ld};
      if (g.N <= 1) return {t, cols};  // one row: the stride is never used
    }
    if (uniform && ld == 0 && min_ld == 0 && cols > 0 && g.N > 0) {
      return {t.reshape({-1, cols})[0].contiguous(), 0};
    }
  }
  return {t.contiguous(), cols};
}

// The input's rows: a stride of at least I, as BLAS requires (an expanded input's 0 is not).
std::pair<Tensor, int64_t> input_rows(const Tensor& input, const Geometry& g) {
  return uniform_rows(input, g, g.I);
}

// A 2-D weight as BLAS and pack_weight read it: unit column stride and a row stride of at least a
// row (a copy otherwise, which only an expanded or overlapping view needs).
Tensor blas_ready(const Tensor& w) {
  return w.stride(1) == 1 && w.stride(0) >= w.size(1) ? w : w.contiguous();
}

// Without a vector kernel for this CPU (the portable scalar one), the planner sends the products
// to BLAS; the scalar kernel then only applies the epilogues.
bool vector_kernel() {
  static const bool vec = std::strcmp(cpu::step_kernel_isa(), "base") != 0;
  return vec;
}

cpu::Plan plan_for(const Geometry& g, bool backward, bool want_input, at::ScalarType dtype) {
  cpu::Shape s;
  s.T = g.T;
  s.B = g.B;
  s.N = g.N;
  s.I = g.I;
  s.H = g.H;
  s.backward = backward;
  s.want_input = want_input;
  s.elem_size = static_cast<int>(c10::elementSize(dtype));
  s.threads = at::in_parallel_region() ? 1 : at::get_num_threads();  // (nested: one thread)
  return cpu::make_plan(s, vector_kernel());
}

template <typename T>
// The recurrence over g; its packed weights are set by the caller (split_work's prepare).
cpu::Recurrence<T> make_recurrence(const Geometry& g, const Tensor* hx, bool relu, bool reverse,
                                   const Tensor& w_blas = Tensor()) {
  return cpu::Recurrence<T>{g.T,
                            g.H,
                            g.batch_sizes.data(),
                            g.offsets.data(),
                            nullptr,
                            hx != nullptr ? hx->data_ptr<T>() : nullptr,
                            relu,
                            reverse,
                            cpu::step_kernel<T>(),
                            w_blas.defined() ? w_blas.data_ptr<T>() : nullptr};
}

// The weight gradients' C[m, n] = A^T B (+ C): the micro-kernel where the planner says so
// (Plan::own_weight_gemm), else the BLAS. With b_rows, B's row q is b_rows[q] (nullptr: zeros;
// b is not read, ldb is the rows' usual distance): the micro-kernel reads them where they lie, the
// BLAS from their copy in `gathered` ([k, n], given by the caller).
template <typename T>
void weight_gemm(bool own, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                 int64_t ldb, bool accumulate, T* c, int64_t ldc, const T* const* b_rows = nullptr,
                 T* gathered = nullptr) {
  if (own) {
    cpu::own_gemm_tn<T>(m, n, k, a, lda, b, ldb, accumulate, c, ldc, b_rows);
    return;
  }
  if (b_rows != nullptr) {
    for (int64_t q = 0; q < k; ++q) {
      T* dst = gathered + q * n;
      if (b_rows[q] != nullptr) {
        std::memcpy(dst, b_rows[q], n * sizeof(T));
      } else {
        std::fill(dst, dst + n, T(0));
      }
    }
    b = gathered;
    ldb = n;
  }
  cpu::gemm_tn(m, n, k, a, lda, b, ldb, T(accumulate ? 1 : 0), c, ldc);
}

// Runs worker(take) once per thread over the batch rows, in parallel when the plan says so;
// take(r0, r1) gives the thread its next slice [r0, r1) of rows, or false when none is left. Rows
// are independent through the recurrence, so each slice runs the whole time loop on its own. One
// slice a thread (at least 4 rows; the kernel cuts any count into register blocks of nearly equal
// rows), of equal work, a row's work being the steps it runs: equal rows for a padded batch,
// fewer of the longest rows for a packed one (whose first rows are its longest), taken from a
// shared counter. Fewer, larger slices share each chunk of the packed weights loaded into L1
// between more rows. 2 threads, float32, GFLOP/s: Xeon (NOTES.md section 38), 1 / 2 slices a
// thread of equal rows, B=32 H=128 forward 243 / 235, fwd+bwd 202 / 183, B=64 H=256 forward 271 /
// 265; a packed batch (B=32 H=128, lengths in [25, 100]) 177 / 214 with equal rows, and 266 with
// one slice a thread of equal work against 246 for two of equal rows (section 49).
template <typename W>
void over_rows(const Geometry& g, const cpu::Plan& plan, const W& worker) {
  const int64_t threads = at::get_num_threads();
  if (plan.split != cpu::Split::kRows || threads < 2) {
    bool given = false;
    worker([&](int64_t& r0, int64_t& r1) {
      r0 = 0;
      r1 = g.B;
      return !std::exchange(given, true);
    });
    return;
  }
  const int64_t per = std::max<int64_t>(4, (g.B + threads - 1) / threads);
  const int64_t slices = (g.B + per - 1) / per;
  // bounds[s]: the first row of slice s. Row r runs len(r) = #{t : batch_sizes[t] > r} steps;
  // slice s starts at the first row whose work before it reaches s / slices of all N.
  c10::SmallVector<int64_t, 17> bounds(slices + 1, g.B);
  bounds[0] = 0;
  // Strictly increasing (each set bound is past the one before, and the last pass leaves room for
  // one row a slice behind it): no slice is empty.
  std::vector<int64_t> len(g.B + 1, 0);
  for (int64_t t = 0; t < g.T; ++t) ++len[g.batch_sizes[t]];  // steps with exactly b rows
  for (int64_t r = g.B - 1; r >= 0; --r) len[r] += len[r + 1];  // steps with >= r rows
  int64_t work = 0;  // rows < r: sum of len(r') = sum of (steps with > r' rows) = len[r' + 1]
  for (int64_t r = 0, s = 1; r < g.B && s < slices; ++r) {
    if (work * slices >= s * g.N && r > bounds[s - 1]) bounds[s++] = r;
    work += len[r + 1];
  }
  for (int64_t s = slices - 1; s >= 1; --s) bounds[s] = std::min(bounds[s], bounds[s + 1] - 1);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, slices), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {  // one worker per index; each drains the counter
      worker([&](int64_t& r0, int64_t& r1) {
        const int64_t s = next++;
        if (s >= slices) return false;
        r0 = bounds[s];
        r1 = bounds[s + 1];
        return true;
      });
    }
  });
}

// Runs run(part, ring) on each thread's share of the recurrence: rows (over_rows), or, for a
// column split, every row and whole panels of the hidden columns, one share per thread of an OpenMP
// team that synchronises after each step (SpinBarrier). Not at::parallel_for: it may run two
// indices on one thread, one after the other, and a barrier between them would never open. The
// team is as large as torch.set_num_threads allows (one thread inside another parallel region).
//
// Before its first step each thread calls pack(mine, p) on its copy of rec, which packs the
// weights that thread reads into p (`entries` of T) and points `mine` at them: rows, all of them,
// into memory of the thread's own; columns, its panels, into a buffer the team shares. A row slice
// also gets a ring (2 x its rows x H, for Recurrence::forward / backward); a column share nullptr.
// Weights packed by one core and read by another at every step, and rows of the output that
// neighbouring threads pass over several times a step, cost cross-core traffic where the cores
// share no cache (NOTES.md section 31).
template <typename T, typename Pack, typename Run>
void split_work(const Geometry& g, const cpu::Plan& plan, const cpu::Recurrence<T>& rec,
                int64_t entries, const Pack& pack, const Run& run) {
  if (plan.split == cpu::Split::kColumns) {
#ifdef _OPENMP
    std::optional<cpu::SpinBarrier> barrier;
    cpu::AlignedBuffer<T> shared(entries);
    const int64_t panels = (g.H + cpu::panel_cols<T>() - 1) / cpu::panel_cols<T>();
#pragma omp parallel num_threads(static_cast<int>(at::get_num_threads()))
    {
#pragma omp single
      barrier.emplace(omp_get_num_threads());
      const int64_t team = omp_get_num_threads(), tid = omp_get_thread_num();
      auto part = rec;
      part.col_begin = tid * panels / team * cpu::panel_cols<T>();
      part.col_end = (tid + 1) * panels / team * cpu::panel_cols<T>();
      part.barrier = &*barrier;
      pack(part, shared.data());
      run(part, static_cast<T*>(nullptr));
    }
    return;
#endif
  }
  over_rows(g, plan, [&](const auto& take) {
    int64_t r0 = 0, r1 = 0;
    if (!take(r0, r1)) return;
    auto mine = rec;
    cpu::AlignedBuffer<T> own(entries);
    pack(mine, own.data());
    do {
      auto part = mine;
      part.row_begin = r0;
      part.row_end = r1;
      cpu::AlignedBuffer<T> ring(2 * (r1 - r0) * g.H);
      run(part, ring.data());
    } while (take(r0, r1));
  });
}

void check_cpu(const Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "rnnext: the CPU kernels support float32 and float64, got ", input.scalar_type());
}

// The forward into out (the rows of every step, H entries each at a uniform row stride) and h_n
// ([B, H], contiguous): rnn_forward's CPU kernel, and the directions of a bidirectional layer
// writing their halves of the layer's output (cpu::rnn_forward_into, stack.cpp).
void forward_into(const Geometry& g, const Tensor& input, const optional<Tensor>& hx,
                  const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                  const optional<Tensor>& b_hh, bool relu, bool reverse, const Tensor& out,
                  int64_t ld_out, const Tensor& h_n) {
  const auto dtype = input.scalar_type();
  if (g.N == 0) {
    if (hx.has_value()) h_n.copy_(*hx); else h_n.zero_();
    return;
  }
  const cpu::Plan plan = plan_for(g, /*backward=*/false, /*want_input=*/true, dtype);
  // (Another row stride needs each thread's ring: not the column split.)
  TORCH_CHECK(ld_out == g.H || plan.split != cpu::Split::kColumns,
              "rnnext: internal: a strided output with the hidden columns split");
  const bool blas = plan.blas_recurrence(), fused = plan.input_per_step();
  // The weights the recurrence reads, packed: W_hh^T (none for BLAS steps), then, when fused,
  // W_ih^T and the summed bias; by each thread for itself (split_work), or here for a column split.
  const int64_t w_hh_entries = blas ? 0 : packed_entries(g.H, g.H, dtype);
  const int64_t w_entries = w_hh_entries + (fused ? packed_entries(g.H, g.I, dtype) + g.H : 0);
  Tensor whc = w_hh.contiguous();
  Tensor w_blas = blas ? whc : Tensor();
  const auto [xc, ldx] = input_rows(input, g);
  Tensor wc = blas_ready(w_ih);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnext_projection", [&] {
    using T = scalar_t;
    if (fused) return;  // per step, inside the recurrence
    // Input projection for every step in one GEMM, written straight into the output buffer.
    T* o = out.data_ptr<T>();
    std::vector<T> bias(static_cast<size_t>(g.H));
    pack_bias<T>(b_ih, b_hh, g.H, bias.data());
    if (plan.own_gemm) {
      // Each row block starts from the bias row itself: no pass writing it into every row first,
      // which the GEMM then read back from L3 or memory (NOTES.md section 95).
      cpu::AlignedBuffer<T> wp(cpu::packed_size<T>(g.H, g.I));
      cpu::pack_weight_shared<T>(wc.data_ptr<T>(), wc.stride(0), g.H, g.I, /*transpose=*/true,
                                 wp.data());
      cpu::own_gemm_rows<T>(g.N, g.H, g.I, xc.data_ptr<T>(), ldx, wp.data(), o, ld_out,
                            cpu::Epilogue::kNone, bias.data());
      return;
    }
    for (int64_t r = 0; r < g.N; ++r) std::memcpy(o + r * ld_out, bias.data(), g.H * sizeof(T));
    cpu::gemm_rows(true, g.N, g.H, g.I, xc.data_ptr<T>(), ldx, wc.data_ptr<T>(), wc.stride(0), T(1),
                   o, ld_out);
  });
  Tensor h0 = hx.has_value() ? hx->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnext_rnn_forward_cpu", [&] {
    using T = scalar_t;
    auto rec = make_recurrence<T>(g, hx.has_value() ? &h0 : nullptr, relu, reverse, w_blas);
    rec.ld_out = ld_out;
    if (plan.own_matvec) rec.gemv = cpu::gemv_kernel<T>();
    if (fused) {
      rec.x = xc.data_ptr<T>();
      rec.ldx = ldx;
      rec.inputs = g.I;
    }
    // Packs the weights into p (w_entries) and points r at them (a column split: r's panels).
    const auto pack = [&](cpu::Recurrence<T>& r, T* p) {
      if (!blas) {
        cpu::pack_weight<T>(whc.data_ptr<T>(), g.H, g.H, g.H, /*transpose=*/true, p, r.col_begin,
                            r.col_end);
      }
      r.w_packed = blas ? nullptr : p;
      if (fused) {
        pack_projection<T>(wc, b_ih, b_hh, p + w_hh_entries);
        r.w_ih_packed = p + w_hh_entries;
        r.bias = r.w_ih_packed + cpu::packed_size<T>(g.H, g.I);
      }
    };
    T* o = out.data_ptr<T>();
    T* hn = h_n.data_ptr<T>();
    split_work(g, plan, rec, w_entries, pack,
               [&](const cpu::Recurrence<T>& part, T* ring) { part.forward(o, hn, ring); });
  });
}

std::tuple<Tensor, Tensor> rnn_forward_cpu(const Tensor& input, const optional<Tensor>& batch_sizes,
                                           const optional<Tensor>& hx, const Tensor& w_ih,
                                           const Tensor& w_hh, const optional<Tensor>& b_ih,
                                           const optional<Tensor>& b_hh, bool relu, bool reverse) {
  const Geometry g = make_geometry(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh);
  check_cpu(input);
  const auto dtype = input.scalar_type();
  Tensor out = empty(g.packed ? at::IntArrayRef{g.N, g.H} : at::IntArrayRef{g.T, g.B, g.H}, dtype);
  Tensor h_n = empty({g.B, g.H}, dtype);
  forward_into(g, input, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse, out, g.H, h_n);
  return {out, h_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward_cpu(
    const Tensor& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const optional<Tensor>& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, bool relu, bool reverse,
    std::array<bool, 5> output_mask) {
  const Geometry g = make_geometry(input, batch_sizes, hx, w_ih, w_hh, {}, {});
  check_cpu(input);
  check_backward(g, input, grad_output, grad_h_n, output);
  auto opts = input.options();
  const auto [want_input, want_hx, want_w_ih, want_w_hh, want_bias] = output_mask;
  const auto dtype = input.scalar_type();
  // grad_hx: every row is written by the recurrence (kZero) once a step runs; zeros otherwise.
  Tensor grad_hx = !want_hx ? empty({0}, dtype)
                   : g.N > 0 ? empty({g.B, g.H}, dtype)
                             : at::zeros({g.B, g.H}, opts);
  const cpu::Plan plan = plan_for(g, /*backward=*/true, want_input, dtype);
  // dpre, and h_prev when the BLAS takes a ragged batch's W_hh gradient (own_gemm_tn reads those
  // rows where they lie)
  const bool ragged =
      want_w_hh && g.packed && g.N > 0 && g.batch_sizes.front() != g.batch_sizes.back();
  const bool gather = ragged && !plan.own_weight_gemm;
  Scratch scratch(Scratch::bytes_for(g.N * g.H, dtype) * (gather ? 2 : 1));
  Tensor dpre = scratch.take(g.N, g.H, dtype);
  Tensor grad_input;
  bool fused_grad_input = false;
  Tensor out = output.contiguous();
  Tensor h0 = hx.has_value() ? hx->contiguous() : Tensor();
  // The bias gradient: each thread's share of the recurrence sums its dpre rows in the epilogue
  // that makes them (Recurrence::grad_bias), into a partial of its own; the partials are added in
  // the order of their rows and columns, so the result does not depend on the threads' timing.
  Tensor grad_bias = want_bias ? at::zeros({g.H}, opts) : empty({0}, dtype);
  if (g.N > 0) {
    // Read in place with any uniform row stride (the micro-kernel takes it as the step's start;
    // copying an expanded gradient cost ~3% of a training iteration at T=100 B=32 H=128).
    const auto [go, ld_go] = uniform_rows(grad_output, g, 0);
    Tensor ghn = grad_h_n.has_value() ? dense_2d(*grad_h_n) : Tensor();
    // BLAS steps take grad_input per step in BLAS as well (W_ih unpacked), micro-kernel steps in
    // the micro-kernel (W_ih packed).
    const bool blas = plan.blas_recurrence();
    Tensor whc = w_hh.contiguous();
    Tensor w_blas = blas ? whc : Tensor();
    fused_grad_input = want_input && plan.input_per_step();
    if (fused_grad_input) grad_input = empty(input.sizes(), dtype);
    Tensor wi = blas_ready(w_ih);
    // The weights the recurrence reads, packed as they are: W_hh (none for BLAS steps), then W_ih
    // when grad_input is taken per step in the micro-kernel; by each thread for itself
    // (split_work), or here for a column split.
    const int64_t w_hh_entries = blas ? 0 : packed_entries(g.H, g.H, dtype);
    const bool pack_ih = fused_grad_input && !blas;
    const int64_t w_entries = w_hh_entries + (pack_ih ? packed_entries(g.I, g.H, dtype) : 0);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnext_rnn_backward_cpu", [&] {
      using T = scalar_t;
      auto rec =
          make_recurrence<T>(g, hx.has_value() ? &h0 : nullptr, relu, reverse, w_blas);
      if (fused_grad_input) {
        rec.grad_x = grad_input.data_ptr<T>();
        rec.inputs = g.I;
        if (blas) {
          rec.w_ih_blas = wi.data_ptr<T>();
          rec.ldw_ih = wi.stride(0);
        }
      }
      const auto pack = [&](cpu::Recurrence<T>& r, T* p) {  // (a column split: r's panels)
        if (!blas) {
          cpu::pack_weight<T>(whc.data_ptr<T>(), g.H, g.H, g.H, /*transpose=*/false, p,
                              r.col_begin, r.col_end);
        }
        r.w_packed = blas ? nullptr : p;
        if (pack_ih) {
          cpu::pack_weight<T>(wi.data_ptr<T>(), wi.stride(0), g.I, g.H, /*transpose=*/false,
                              p + w_hh_entries);
          r.w_ih_plain = p + w_hh_entries;
        }
      };
      const T* gop = go.data_ptr<T>();
      const T* ghnp = grad_h_n.has_value() ? ghn.data_ptr<T>() : nullptr;
      const T* op = out.data_ptr<T>();
      T* dp = dpre.data_ptr<T>();
      T* ghx = want_hx ? grad_hx.data_ptr<T>() : nullptr;
      std::mutex mutex;
      std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<T>>> partials;
      split_work(g, plan, rec, w_entries, pack, [&](const cpu::Recurrence<T>& part, T* ring) {
        std::vector<T> sums(want_bias ? g.H : 0, T(0));
        auto mine = part;
        mine.grad_bias = want_bias ? sums.data() : nullptr;
        mine.backward(gop, ld_go, ghnp, op, dp, ghx, ring);
        if (!want_bias) return;
        const std::lock_guard<std::mutex> lock(mutex);
        partials.emplace_back(std::make_pair(part.row_begin, part.col_begin), std::move(sums));
      });
      std::sort(partials.begin(), partials.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      T* gb = want_bias ? grad_bias.data_ptr<T>() : nullptr;
      for (const auto& [key, sums] : partials) {
        for (int64_t j = 0; j < g.H; ++j) gb[j] += sums[j];
      }
    });
  } else if (want_hx && grad_h_n.has_value()) {
    grad_hx.copy_(*grad_h_n);  // no step ran: h_n is hx itself
  }
  // grad_input as one GEMM (micro-kernel or BLAS) when the recurrence did not take it per step;
  // then the weight gradients from raw pointers (weight_gemm: micro-kernel or BLAS, no
  // dispatcher), with no h_prev copy when every step has all B rows.
  if (!fused_grad_input) {
    if (want_input && plan.own_gemm && g.N > 0) {
      grad_input = empty(input.sizes(), dtype);
      Tensor wi = blas_ready(w_ih);
      AT_DISPATCH_FLOATING_TYPES(dtype, "rnnext_grad_input_cpu", [&] {
        cpu::AlignedBuffer<scalar_t> wp(cpu::packed_size<scalar_t>(g.I, g.H));
        cpu::pack_weight_shared<scalar_t>(wi.data_ptr<scalar_t>(), wi.stride(0), g.I, g.H,
                                          /*transpose=*/false, wp.data());
        cpu::own_gemm_rows<scalar_t>(g.N, g.I, g.H, dpre.data_ptr<scalar_t>(), g.H,
                                   wp.data(), grad_input.data_ptr<scalar_t>(), g.I,
                                   cpu::Epilogue::kZero);
      });
    } else {
      grad_input = want_input ? at::mm(dpre, w_ih).view(input.sizes()) : empty({0}, dtype);
    }
  }
  Tensor grad_w_ih = empty(want_w_ih ? at::IntArrayRef{g.H, g.I} : at::IntArrayRef{0}, dtype);
  Tensor grad_w_hh = empty(want_w_hh ? at::IntArrayRef{g.H, g.H} : at::IntArrayRef{0}, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnnext_rnn_backward_weights_cpu", [&] {
    using T = scalar_t;
    const T* dp = dpre.data_ptr<T>();
    const int64_t N = g.N, H = g.H, B = g.B;
    const bool own = plan.own_weight_gemm;
    if (want_w_ih) {
      const auto [xc, ldx] = input_rows(input, g);
      weight_gemm<T>(own, H, g.I, N, dp, H, xc.data_ptr<T>(), ldx, false, grad_w_ih.data_ptr<T>(),
                     g.I);
    }
    if (want_w_hh) {
      T* gw = grad_w_hh.data_ptr<T>();
      const T* o = out.data_ptr<T>();
      const T* h0p = hx.has_value() ? h0.data_ptr<T>() : nullptr;
      if (N == 0) {
        for (int64_t j = 0; j < H * H; ++j) gw[j] = T(0);
      } else if (!g.packed || g.batch_sizes.front() == g.batch_sizes.back()) {
        // Every step has all B rows: step t started from the step before it in time order
        // (t-1 forward, t+1 reverse), the first one processed from hx.
        const int64_t carried = N - B;  // rows of the steps that continue from another step
        const T* d_cont = reverse ? dp : dp + B * H;
        const T* h_cont = reverse ? o + B * H : o;
        if (carried > 0 || h0p == nullptr) {  // (k = 0 writes zeros)
          weight_gemm<T>(own, H, H, carried, d_cont, H, h_cont, H, false, gw, H);
        }
        if (h0p != nullptr) {
          const T* d_first = reverse ? dp + carried * H : dp;
          weight_gemm<T>(own, H, H, B, d_first, H, h0p, H, carried > 0, gw, H);
        }
      } else {
        // A ragged batch: each row's h_prev where it lies (a row of the step before, of hx, or
        // zeros), read there by the micro-kernel (a serial ~1 MB copy at T=100 B=32 H=128 with
        // lengths in [25, 100], ~4% of a training call: NOTES.md section 66), copied for the BLAS.
        std::vector<const T*> prev(N);
        make_recurrence<T>(g, hx.has_value() ? &h0 : nullptr, relu, reverse)
            .prev_rows(o, prev.data());
        // (the tensor kept alive to the end: without kept memory, take() returns a fresh one)
        Tensor gathered = own ? Tensor() : scratch.take(N, H, dtype);
        weight_gemm<T>(own, H, H, N, dp, H, nullptr, H, false, gw, H, prev.data(),
                       own ? nullptr : gathered.data_ptr<T>());
      }
    }
  });
  return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace

void cpu::poison(const Tensor& t) {
  if (poison_memory()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

void cpu::rnn_forward_into(const Tensor& input, const optional<Tensor>& batch_sizes,
                           const optional<Tensor>& hx, const Tensor& w_ih, const Tensor& w_hh,
                           const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, bool relu,
                           bool reverse, const Tensor& out, const Tensor& h_n) {
  const Geometry g = make_geometry(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh);
  check_cpu(input);
  const auto want = g.packed ? std::vector<int64_t>{g.N, g.H} : std::vector<int64_t>{g.T, g.B, g.H};
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == input.scalar_type() &&
                  out.sizes() == at::IntArrayRef(want) && out.stride(-1) == 1 &&
                  out.stride(-2) >= g.H && (g.packed || out.stride(0) == g.B * out.stride(1)) &&
                  h_n.device().is_cpu() && h_n.scalar_type() == input.scalar_type() &&
                  h_n.sizes() == at::IntArrayRef({g.B, g.H}) && h_n.is_contiguous(),
              "rnnext: internal: rnn_forward_into's outputs do not fit the call");
  forward_into(g, input, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse, out, out.stride(-2), h_n);
}

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
}

}  // namespace rnnext
