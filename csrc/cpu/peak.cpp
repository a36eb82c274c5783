// The CPU's FMA peak, measured: the ceiling the benchmark suite reports every row against.
//
// Each thread runs K independent chains c_i = c_i * a + b of fused multiply-adds on whole vector
// registers (no memory traffic in the loop), K large enough to cover the FMA latency on every FMA
// port (AVX-512: 16 chains of zmm, for 2 ports x 4 cycles; AVX2: 12 of ymm). One FMA counts as 2
// FLOPs per lane. The threads are torch's (at::parallel_for over torch.get_num_threads() indices,
// one per thread); each times its own loop, and the rates add up; the best of a few repeats is the
// peak (other processes only slow a repeat down).
//
// The loop cannot be optimised away: the chains' final values are summed and stored to a volatile
// sink, a and b come from volatile loads (not constants), and without -ffast-math the compiler may
// neither reassociate nor fold the dependent FMAs. The values converge to b / (1 - a) ~ 1, so no
// denormal or overflow slows them down.
//
// Python: rnnext._C._fma_peak(dtype, isa="", seconds=0.2) -> (gflops, threads, isa)
//         rnnext._C._cpu_isa() -> the ISA the CPU kernels dispatch to (kernels.cpp)
//         rnnext._C._cpu_isas() -> the ISAs this CPU can run, widest first
#include "peak.h"

#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNNEXT_PEAK_X86 1
#include <immintrin.h>
#endif

namespace rnnext {
namespace cpu {
namespace {

volatile float g_a32 = 0.999999f, g_b32 = 1e-6f;
volatile double g_a64 = 0.999999999, g_b64 = 1e-9;
volatile double g_sink = 0;

// One thread's chains: iters rounds of K FMAs per chain set. Returns a value depending on all.
#define RNNEXT_PEAK_CHAINS(NAME, ATTR, REG, T, K, SET1, FMA, REDUCE)  \
  ATTR double NAME(int64_t iters, T a_, T b_) {                         \
    const REG a = SET1(a_), b = SET1(b_);                               \
    REG c[K];                                                           \
    for (int i = 0; i < K; ++i) c[i] = SET1(T(i) * T(1e-3));            \
    for (int64_t it = 0; it < iters; ++it) {                            \
      _Pragma("GCC unroll 32") for (int i = 0; i < K; ++i) c[i] = FMA(c[i], a, b); \
    }                                                                   \
    for (int i = 1; i < K; ++i) c[0] = c[0] + c[i];                    \
    return static_cast<double>(REDUCE(c[0]));                           \
  }

#if RNNEXT_PEAK_X86
#define RNNEXT_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define RNNEXT_AVX2 __attribute__((target("avx2,fma")))
// The sum of a register's lanes, through memory (not _mm512_reduce_add_*: GCC 12 warns inside
// those, a known false positive). One body per target: a function taking a zmm / ymm argument
// must carry that target.
template <class T, class R>
RNNEXT_AVX512 inline T sum512(R v) {
  alignas(64) T x[sizeof(R) / sizeof(T)];
  std::memcpy(x, &v, sizeof(R));
  T s = 0;
  for (T e : x) s += e;
  return s;
}
template <class T, class R>
RNNEXT_AVX2 inline T sum256(R v) {
  alignas(32) T x[sizeof(R) / sizeof(T)];
  std::memcpy(x, &v, sizeof(R));
  T s = 0;
  for (T e : x) s += e;
  return s;
}
RNNEXT_PEAK_CHAINS(avx512_f32, RNNEXT_AVX512, __m512, float, 16, _mm512_set1_ps, _mm512_fmadd_ps, sum512<float>)
RNNEXT_PEAK_CHAINS(avx512_f64, RNNEXT_AVX512, __m512d, double, 16, _mm512_set1_pd, _mm512_fmadd_pd, sum512<double>)
RNNEXT_PEAK_CHAINS(avx2_f32, RNNEXT_AVX2, __m256, float, 12, _mm256_set1_ps, _mm256_fmadd_ps, sum256<float>)
RNNEXT_PEAK_CHAINS(avx2_f64, RNNEXT_AVX2, __m256d, double, 12, _mm256_set1_pd, _mm256_fmadd_pd, sum256<double>)
#endif

// The portable loop: scalar multiply-adds, 8 chains (the compiler may vectorise them for the
// baseline ISA, as it may the portable kernel).
template <typename T>
T scalar_set1(T x) { return x; }
template <typename T>
T scalar_fma(T c, T a, T b) { return c * a + b; }
template <typename T>
T scalar_sum(T x) { return x; }
RNNEXT_PEAK_CHAINS(base_f32, , float, float, 8, scalar_set1<float>, scalar_fma<float>, scalar_sum<float>)
RNNEXT_PEAK_CHAINS(base_f64, , double, double, 8, scalar_set1<double>, scalar_fma<double>, scalar_sum<double>)
#undef RNNEXT_PEAK_CHAINS

struct Loop {
  const char* isa;
  double (*f32)(int64_t, float, float);
  double (*f64)(int64_t, double, double);
  int64_t flops_f32;  // per iteration: chains x lanes x 2
  int64_t flops_f64;
};

// The ISAs this CPU runs, widest first (the same feature tests as kernels.cpp's dispatch, without
// its RNNEXT_CPU_ISA override: the peak is the silicon's).
std::vector<Loop> loops() {
  std::vector<Loop> out;
#if RNNEXT_PEAK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
    out.push_back({"avx512", &avx512_f32, &avx512_f64, 16 * 16 * 2, 16 * 8 * 2});
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    out.push_back({"avx2", &avx2_f32, &avx2_f64, 12 * 8 * 2, 12 * 4 * 2});
  }
#endif
  out.push_back({"base", &base_f32, &base_f64, 8 * 2, 8 * 2});
  return out;
}

double loop_seconds(const Loop& loop, bool f64, int64_t iters, double* sink) {
  const auto t0 = std::chrono::steady_clock::now();
  *sink += f64 ? loop.f64(iters, g_a64, g_b64) : loop.f32(iters, g_a32, g_b32);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One run of `iters` iterations on each of torch's threads, each thread timing its own loop:
// (GFLOP/s summed over the threads, threads that ran). Per-thread clocks keep the wake-up of the
// pool's threads out of the figure, not the sharing of a core: two threads on one core each take
// twice as long, and the sum stays one core's rate.
std::pair<double, int64_t> run_once(const Loop& loop, bool f64, int64_t iters, int64_t threads) {
  const double flops = static_cast<double>(f64 ? loop.flops_f64 : loop.flops_f32) * iters;
  std::atomic<int64_t> ran{0};
  std::vector<double> rate(threads, 0.0), sink(threads, 0.0);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    ++ran;  // one per worker: at::parallel_for gives each worker one contiguous chunk
    // A worker given several indices (fewer threads than asked) runs them one after the other:
    // their rates then add up to that worker's, not more.
    const double share = 1.0 / static_cast<double>(end - begin);
    for (int64_t i = begin; i < end; ++i) {
      rate[i] = share * flops / loop_seconds(loop, f64, iters, &sink[i]) / 1e9;
    }
  });
  double total = 0, s = 0;
  for (int64_t i = 0; i < threads; ++i) {
    total += rate[i];
    s += sink[i];
  }
  g_sink = s;
  return {total, ran.load()};
}

struct Peak {
  double gflops;
  int64_t threads;
  const char* isa;
};

// Calibrated on the calling thread (no pool in the way), then the best of `repeats` runs.
Peak measure(const Loop& loop, bool f64, double seconds) {
  const int64_t threads = std::max(1, at::get_num_threads());
  const int repeats = 5;
  const double per_run = std::max(2e-3, seconds / repeats);
  double sink = 0;
  int64_t iters = 1 << 10;
  double t = loop_seconds(loop, f64, iters, &sink);
  while (t < 1e-3 && iters < (int64_t{1} << 40)) {
    iters *= 4;
    t = loop_seconds(loop, f64, iters, &sink);
  }
  g_sink = sink;
  iters = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iters) * per_run / t));
  double best = 0;
  int64_t ran = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto [gflops, n] = run_once(loop, f64, iters, threads);
    best = std::max(best, gflops);
    ran = std::max(ran, n);
  }
  return {best, ran, loop.isa};
}

// _fma_peak(dtype: str, isa: str = "", seconds: float = 0.2) -> (gflops, threads, isa)
PyObject* py_fma_peak(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* dtype = nullptr;
  const char* isa = "";
  double seconds = 0.2;
  if (!PyArg_ParseTuple(args, "s|sd", &dtype, &isa, &seconds)) return nullptr;
  const bool f64 = std::strcmp(dtype, "float64") == 0;
  TORCH_CHECK_VALUE(f64 || std::strcmp(dtype, "float32") == 0,
                    "rnnext: _fma_peak: dtype must be 'float32' or 'float64', got '", dtype, "'");
  TORCH_CHECK_VALUE(seconds > 0 && seconds < 60, "rnnext: _fma_peak: seconds must be in (0, 60), got ",
                    seconds);
  const std::vector<Loop> all = loops();
  const Loop* chosen = &all.front();
  if (isa[0] != '\0') {
    auto it = std::find_if(all.begin(), all.end(),
                           [&](const Loop& l) { return std::strcmp(l.isa, isa) == 0; });
    TORCH_CHECK_VALUE(it != all.end(), "rnnext: _fma_peak: this CPU does not run ISA '", isa,
                      "' (it runs ", all.front().isa, " and narrower)");
    chosen = &*it;
  }
  Peak p;
  {
    pybind11::gil_scoped_release no_gil;
    p = measure(*chosen, f64, seconds);
  }
  return Py_BuildValue("(dLs)", p.gflops, static_cast<long long>(p.threads), p.isa);
  END_HANDLE_TH_ERRORS
}

PyObject* py_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(step_kernel_isa()); }

PyObject* py_cpu_isas(PyObject*, PyObject*) {
  const std::vector<Loop> all = loops();
  PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(all.size()));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < all.size(); ++i) {
    PyObject* s = PyUnicode_FromString(all[i].isa);
    if (s == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, static_cast<Py_ssize_t>(i), s);
  }
  return out;
}

PyMethodDef methods[] = {
    {"_fma_peak", py_fma_peak, METH_VARARGS,
     "_fma_peak(dtype, isa='', seconds=0.2) -> (gflops, threads, isa): the register-only FMA peak "
     "on torch's threads (csrc/cpu/peak.cpp); isa '' is the widest this CPU runs."},
    {"_cpu_isa", py_cpu_isa, METH_NOARGS, "The ISA the CPU kernels dispatch to (avx512, avx2 or base)."},
    {"_cpu_isas", py_cpu_isas, METH_NOARGS, "The ISAs this CPU runs, widest first."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* peak_methods() { return methods; }

}  // namespace cpu
}  // namespace rnnext
