// The per-step micro-kernel of the CPU recurrence, one implementation per instruction set
// (AVX-512, AVX2+FMA, portable), chosen once at run time from the CPU's features.
//
//   C[r, 0:n] = epilogue(C[r, 0:n] + sum_{q<k} A[r, q] * P[q, 0:n])   for r < rows
//
// P is a packed weight: k rows of ldp >= round_up(n, kPackAlign) entries, zero past column n, so
// every vector load of P is whole. k = 0 applies only the epilogue. Row-major, row strides given.
#pragma once

#include <cstdint>

namespace rnnext {
namespace cpu {

constexpr int64_t kPackAlign = 16;  // column padding of packed weights (>= every vector width)

enum class Epilogue : int {
  kNone = 0,     // C = C + A P
  kTanh = 1,     // C = tanh(C + A P)
  kRelu = 2,     // C = relu(C + A P)
  kTanhBwd = 3,  // C = (C + A P) * (1 - aux^2)     aux: [rows, ldc], the forward's h
  kReluBwd = 4,  // C = aux <= 0 ? 0 : C + A P   (a NaN aux passes, as torch's threshold_backward)
  kZero = 5,     // C = A P (C is not read)
};

template <typename T>
using StepKernel = void (*)(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* p,
                            int64_t ldp, T* c, int64_t ldc, const T* aux, Epilogue ep);

// The best kernel this CPU runs (RNNEXT_CPU_ISA=avx512|avx2|base in the environment overrides it).
StepKernel<float> step_kernel_f32();
StepKernel<double> step_kernel_f64();
const char* step_kernel_isa();

// Each instruction set's entry points (absent ones are never called: see kernels.cpp).
#define RNNEXT_DECLARE_ISA(isa)                                                              \
  namespace isa {                                                                            \
  void step(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, \
            int64_t, const float*, Epilogue);                                                \
  void step(int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t,       \
            double*, int64_t, const double*, Epilogue);                                      \
  }
RNNEXT_DECLARE_ISA(base)
RNNEXT_DECLARE_ISA(avx2)
RNNEXT_DECLARE_ISA(avx512)
#undef RNNEXT_DECLARE_ISA

// Packs W for the kernel: P has k rows of ldp entries, P[q, j] = W[j, q] (transpose; W is [n, k])
// or W[q, j] (W is [k, n]), for j < n, and zero for n <= j < ldp. ldw is W's row stride.
template <typename T>
void pack_weight(const T* w, int64_t ldw, int64_t n, int64_t k, bool transpose, T* p, int64_t ldp) {
  if (transpose) {  // 16 x 16 tiles: the 16 source rows and 16 destination rows stay in L1
    constexpr int64_t kTile = 16;
    for (int64_t q0 = 0; q0 < k; q0 += kTile) {
      const int64_t q1 = q0 + kTile < k ? q0 + kTile : k;
      for (int64_t j0 = 0; j0 < n; j0 += kTile) {
        const int64_t j1 = j0 + kTile < n ? j0 + kTile : n;
        for (int64_t q = q0; q < q1; ++q) {
          for (int64_t j = j0; j < j1; ++j) p[q * ldp + j] = w[j * ldw + q];
        }
      }
    }
  } else {
    for (int64_t q = 0; q < k; ++q) {
      for (int64_t j = 0; j < n; ++j) p[q * ldp + j] = w[q * ldw + j];
    }
  }
  for (int64_t q = 0; q < k; ++q) {
    for (int64_t j = n; j < ldp; ++j) p[q * ldp + j] = T(0);
  }
}

}  // namespace cpu
}  // namespace rnnext
