// The micro-kernel body, written once over a vector "traits" type V and included by each
// instruction-set translation unit (kernel_<isa>.cpp) after it has set the target and defined V.
// No includes here: the includer includes what it needs before switching the target, so no
// library inline function is compiled for an instruction set the CPU may lack.
//
// V provides: T, reg, W (lanes), MR (row block), NR (column block, in vectors), and
//   zero, set1, load (whole), loadn/storen (first m lanes), store, fma(a,b,c)=a*b+c, add, mul,
//   tanh, relu, tanh_bwd(g, h) = g*(1-h*h), relu_bwd(g, h) = h <= 0 ? 0 : g; for the vector tanh
//   also div, abs, min_keep_nan, copysign, and (float64) sub, scale_pow2, round.

// A is row-major (A[r, q] = a[r * lda + q]) or, with ACM, column-major (A[r, q] = a[q * lda + r]:
// the weight gradients' dpre^T, read in place from dpre [N, H]).
template <bool ACM>
static inline __attribute__((always_inline)) int64_t a_at(int64_t r, int64_t q, int64_t lda) {
  return ACM ? q * lda + r : r * lda + q;
}

// One chunk of one product, for a block: A's rows from a (row or column stride lda, per ACM) and
// P's rows from p (row stride ldp, already at the block's first column), k of them.
template <class T>
struct Part {
  const T* a;
  int64_t lda;
  const T* p;
  int64_t k;
};

// acc[r][j] += sum_q A[r, q] P[q, j-th vector] over one part.
template <class V, int MR, int NR, bool ACM>
static inline __attribute__((always_inline)) void fmas(typename V::reg (&acc)[MR][NR],
                                                      const Part<typename V::T>& part,
                                                      int64_t ldp, const char* pf = nullptr,
                                                      int64_t npf = 0) {
  using reg = typename V::reg;
  constexpr int W = V::W;
  const typename V::T* a = part.a;
  const typename V::T* p = part.p;
  const int64_t lda = part.lda;
  const auto row = [&](int64_t q) __attribute__((always_inline)) {
    reg w[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) w[j] = V::load(p + q * ldp + j * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const reg x = V::set1(a[a_at<ACM>(r, q, lda)]);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[r][j] = V::fma(x, w[j], acc[r][j]);
    }
  };
  // The k iterations that prefetch a line first, then the rest with no test and half the loop
  // counting: an AVX2 4 x 3 iteration was ~25 instructions for its 12 FMAs with the test and the
  // counting in each, ~21 without, and its GEMMs run 3-7% faster (benchmarks/NOTES.md section 94).
  const int64_t np = npf < part.k ? npf : part.k;
  int64_t q = 0;
  for (; q < np; ++q) {
    __builtin_prefetch(pf + 64 * q, 0, 2);
    row(q);
  }
#pragma GCC unroll 2
  for (; q < part.k; ++q) row(q);
}

// Where a block's accumulators start: C's rows, zero, or init's rows (row stride ld_init, 0 for
// one row).
enum class Start : int { kC, kZero, kInit };

// One MR x NR block: rows r < MR, vectors c < NR, lanes up to `last` in the last vector. part[2]:
// the chunk's parts of the two products (k = 0 for none), summed in the same accumulators; the
// sums stored to C as they are (finish() applies the epilogue: kept out of this function, whose
// 24 accumulators must stay in registers through the loops, and GCC spills them to the stack
// once the epilogue's constants and pointers compete for registers here).
template <class V, int MR, int NR, bool ACM>
static inline __attribute__((always_inline)) void block(const Part<typename V::T>* part,
                                                       int64_t ldp, typename V::T* c, int64_t ldc,
                                                       Start start, const typename V::T* init,
                                                       int64_t ld_init, int last,
                                                       const char* pf, int64_t npf) {
  using reg = typename V::reg;
  constexpr int W = V::W;
  reg acc[MR][NR];
  if (start == Start::kZero) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[r][j] = V::zero();
  } else {
    const typename V::T* s = start == Start::kInit ? init : c;
    const int64_t lds = start == Start::kInit ? ld_init : ldc;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j)
        acc[r][j] = (j == NR - 1 && last < W) ? V::loadn(s + r * lds + j * W, last)
                                              : V::load(s + r * lds + j * W);
  }
  fmas<V, MR, NR, ACM>(acc, part[0], ldp, pf, npf);
  fmas<V, MR, NR, ACM>(acc, part[1], ldp);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      if (j == NR - 1 && last < W) {
        V::storen(c + r * ldc + j * W, acc[r][j], last);
      } else {
        V::store(c + r * ldc + j * W, acc[r][j]);
      }
    }
  }
}

// The epilogue of m rows x nv vectors of C (lanes up to `last` in the last vector), just stored by
// block() and still in L1: C = op(C), copy = C when set (row stride ld_copy), and the columns'
// sums of the result added to sums when set.
template <class V>
static __attribute__((noinline)) void finish(int m, int nv, int last, typename V::T* c, int64_t ldc,
                                             typename V::T* copy, int64_t ld_copy,
                                             const typename V::T* aux, Epilogue ep,
                                             typename V::T* sums) {
  using reg = typename V::reg;
  constexpr int W = V::W;
  for (int r = 0; r < m; ++r) {
    for (int j = 0; j < nv; ++j) {
      const bool partial = j == nv - 1 && last < W;
      typename V::T* cj = c + r * ldc + j * W;
      reg v = partial ? V::loadn(cj, last) : V::load(cj);
      switch (ep) {
        case Epilogue::kTanh: v = V::tanh(v); break;
        case Epilogue::kRelu: v = V::relu(v); break;
        case Epilogue::kTanhBwd:
        case Epilogue::kReluBwd: {
          const typename V::T* h = aux + r * ldc + j * W;
          const reg hv = partial ? V::loadn(h, last) : V::load(h);
          v = ep == Epilogue::kTanhBwd ? V::tanh_bwd(v, hv) : V::relu_bwd(v, hv);
          break;
        }
        default: break;
      }
      if (partial) {
        V::storen(cj, v, last);
        if (copy != nullptr) V::storen(copy + r * ld_copy + j * W, v, last);
      } else {
        V::store(cj, v);
        if (copy != nullptr) V::store(copy + r * ld_copy + j * W, v);
      }
    }
  }
  if (sums == nullptr) return;
  // The column sums, from the rows just stored (in L1), in row order.
  for (int j = 0; j < nv; ++j) {
    const bool partial = j == nv - 1 && last < W;
    typename V::T* sj = sums + j * W;
    reg sum = partial ? V::loadn(sj, last) : V::load(sj);
    for (int r = 0; r < m; ++r) {
      const typename V::T* cj = c + r * ldc + j * W;
      sum = V::add(sum, partial ? V::loadn(cj, last) : V::load(cj));
    }
    if (partial) {
      V::storen(sj, sum, last);
    } else {
      V::store(sj, sum);
    }
  }
}

// Lines to prefetch (StepArgs::prefetch, or the next chunk of P: step_impl), handed out a block at
// a time: up to `per` lines of the current range, one per k iteration of the block's first product.
struct Prefetcher {
  const char* p[2];
  const char* end[2];
  int64_t per;
  int64_t take(int64_t k, const char*& at) {
    const int i = p[0] < end[0] ? 0 : 1;
    const int64_t left = (end[i] - p[i] + 63) / 64;
    int64_t n = per < k ? per : k;
    n = n < left ? n : left;
    at = p[i];
    p[i] += n * 64;
    return n > 0 ? n : 0;
  }
};

// One block of m rows (1 <= m <= V::MR), m chosen at run time.
template <class V, int NR, bool ACM, int M = V::MR>
static inline __attribute__((always_inline)) void block_m(int m, const Part<typename V::T>* part,
                                                         int64_t ldp, typename V::T* c, int64_t ldc,
                                                         Start start, const typename V::T* init,
                                                         int64_t ld_init, int last,
                                                         const char* pf, int64_t npf) {
  if (m == M) return block<V, M, NR, ACM>(part, ldp, c, ldc, start, init, ld_init, last, pf, npf);
  if constexpr (M > 1) {
    block_m<V, NR, ACM, M - 1>(m, part, ldp, c, ldc, start, init, ld_init, last, pf, npf);
  }
}

// Rows in blocks of at most MR, as equal as they come (16 rows: 6, 5, 5; 8 rows: 4, 4), columns in
// blocks of NR vectors: no remainder block of one or two rows (unless the step has only those),
// which would reload P for a few FMAs. Each block first asks for the rows the next block will load
// before its first FMA or in its epilogue: init's (a step's projection or grad_out, read once and
// so from L3 or memory), aux's (the backward's h), and C's where they start from C and c_ahead
// is set (StepArgs::c_far). A 4 x 3 AVX2 block spends ~770 cycles a chunk, a quarter of a 6 x 4
// AVX-512 block's, so its start's trip to memory was a larger share (benchmarks/NOTES.md
// sections 89 and 91).
template <class V, int NR, bool ACM>
static inline __attribute__((always_inline)) void column_block(
    int64_t rows, const Part<typename V::T>* part, int64_t ldp, typename V::T* c, int64_t ldc,
    Start start, const typename V::T* init, int64_t ld_init, typename V::T* copy,
    int64_t ld_copy, const typename V::T* aux, typename V::T* sums, int last, Epilogue ep,
    Prefetcher& pf, bool c_ahead) {
  using T = typename V::T;
  const int64_t blocks = (rows + V::MR - 1) / V::MR;
  if (blocks == 0) return;
  const int64_t base = rows / blocks, extra = rows % blocks;
  c_ahead = c_ahead && start == Start::kC;
  const bool init_ahead = start == Start::kInit && ld_init != 0;
  const bool aux_ahead = ep == Epilogue::kTanhBwd || ep == Epilogue::kReluBwd;
  // Prefetches the lines of rows [from, from + count) of m (row stride ld), this block's columns.
  const auto ahead = [](const T* m, int64_t ld, int64_t from, int64_t count, bool write) {
    for (int64_t q = from; q < from + count; ++q) {
      const auto row = reinterpret_cast<std::uintptr_t>(m + q * ld);
      const std::uintptr_t end = row + NR * V::W * sizeof(T);
      for (std::uintptr_t line = row & ~std::uintptr_t{63}; line < end; line += 64) {
        const char* at = reinterpret_cast<const char*>(line);
        if (write) {
          __builtin_prefetch(at, 1, 3);
        } else {
          __builtin_prefetch(at, 0, 3);
        }
      }
    }
  };
  for (int64_t i = 0, r = 0; i < blocks; ++i) {
    const int m = static_cast<int>(base + (i < extra ? 1 : 0));
    if (i + 1 < blocks) {
      const int64_t next = base + (i + 1 < extra ? 1 : 0);
      if (c_ahead) ahead(c, ldc, r + m, next, true);
      if (init_ahead) ahead(init, ld_init, r + m, next, false);
      if (aux_ahead) ahead(aux, ldc, r + m, next, false);
    }
    Part<T> at[2] = {part[0], part[1]};
    for (Part<T>& pt : at) {
      if (pt.k > 0) pt.a += a_at<ACM>(r, 0, pt.lda);
    }
    const char* pf_at = nullptr;
    const int64_t npf = pf.take(at[0].k, pf_at);
    block_m<V, NR, ACM>(m, at, ldp, c + r * ldc, ldc, start, init ? init + r * ld_init : init,
                        ld_init, last, pf_at, npf);
    if (ep != Epilogue::kNone || copy != nullptr || sums != nullptr) {
      finish<V>(m, NR, last, c + r * ldc, ldc, copy ? copy + r * ld_copy : copy, ld_copy,
                aux ? aux + r * ldc : aux, ep, sums);
    }
    r += m;
  }
}

template <class V, bool ACM>
static void step_impl(const StepArgs<typename V::T>& s) {
  using T = typename V::T;
  constexpr int W = V::W, NR = V::NR;
  const int64_t PC = s.ldp, rows = s.rows, n = s.n;
  if (rows <= 0 || n <= 0) return;
  const Product<T>* prod[2] = {&s.first, &s.second};
  const int64_t k = s.first.k + s.second.k;
  const int64_t ck = s.chunk_rows > 0 ? s.chunk_rows : kChunkRows;
  Prefetcher pf{};
  for (int i = 0; i < 2; ++i) {
    pf.p[i] = static_cast<const char*>(s.prefetch[i]);
    pf.end[i] = pf.p[i] + (s.prefetch[i] != nullptr ? s.prefetch_bytes[i] : 0);
  }
  const int64_t row_blocks = (rows + V::MR - 1) / V::MR;
  if (pf.end[0] > pf.p[0] || pf.end[1] > pf.p[1]) {
    const int64_t lines = (pf.end[0] - pf.p[0] + pf.end[1] - pf.p[1]) / 64 + 2;
    const int64_t chunks = k > 0 ? (k + ck - 1) / ck : 1;
    const int64_t blocks = ((n + NR * W - 1) / (NR * W)) * chunks * row_blocks;
    pf.per = (lines + blocks - 1) / blocks;
  }
  // The chunk [q0, q0 + kc) of the two products' k laid end to end, panel p0.
  const auto chunk = [&](int64_t p0, int64_t q0, int64_t kc, Part<T>(&part)[2]) {
    for (int i = 0, base = 0; i < 2; base += prod[i]->k, ++i) {
      const Product<T>& pr = *prod[i];
      const int64_t lo = q0 - base < 0 ? 0 : (q0 - base > pr.k ? pr.k : q0 - base);
      const int64_t hi = q0 + kc - base < 0 ? 0 : (q0 + kc - base > pr.k ? pr.k : q0 + kc - base);
      part[i] = {hi > lo ? pr.a + a_at<ACM>(0, lo, pr.lda) : pr.a, pr.lda,
                 hi > lo ? pr.p + (p0 / PC) * pr.kp * PC + lo * PC : pr.p, hi - lo};
    }
  };
  // Weights past a core's L2 stream from L3 at every call: each chunk brings the next one's rows
  // of P into L2 while it computes (when the caller asked for no other prefetch).
  const bool stream = s.prefetch[0] == nullptr && s.prefetch[1] == nullptr &&
                      k * ((n + PC - 1) / PC) * PC * static_cast<int64_t>(sizeof(T)) >
                          kStreamWeightBytes;
  const bool fetch = stream || pf.end[0] > pf.p[0] || pf.end[1] > pf.p[1];
  for (int64_t p0 = 0; p0 < n; p0 += PC) {  // one panel of columns
    const int64_t pn = n - p0 < PC ? n - p0 : PC;
    int64_t q0 = 0;
    do {  // k in chunks; C holds the partial sums between chunks, the epilogue after the last
      const int64_t kc = k - q0 < ck ? k - q0 : ck;
      const bool first = q0 == 0, final = q0 + kc >= k;
      const Start start = !first ? Start::kC
                          : s.init != nullptr ? Start::kInit
                          : s.ep == Epilogue::kZero ? Start::kZero : Start::kC;
      const Epilogue e = final && s.ep != Epilogue::kZero ? s.ep : Epilogue::kNone;
      T* copy = final ? s.copy : nullptr;
      T* sums = final ? s.sums : nullptr;
      const int64_t ld_copy = s.ld_copy != 0 ? s.ld_copy : s.ldc;
      Part<T> part[2];
      chunk(p0, q0, kc, part);
      // A chunk of the second product alone goes first where there is something to prefetch: the
      // same sums, and block() issues the prefetches from the first part's loop.
      if (fetch && part[0].k == 0) std::swap(part[0], part[1]);
      if (stream) {
        const int64_t np0 = final ? p0 + PC : p0, nq0 = final ? 0 : q0 + kc;
        pf = Prefetcher{};
        if (np0 < n) {
          Part<T> next[2];
          chunk(np0, nq0, k - nq0 < ck ? k - nq0 : ck, next);
          int64_t lines = 0;
          for (int i = 0; i < 2; ++i) {
            pf.p[i] = reinterpret_cast<const char*>(next[i].p);
            pf.end[i] = pf.p[i] + next[i].k * PC * static_cast<int64_t>(sizeof(T));
            lines += (pf.end[i] - pf.p[i]) / 64;
          }
          const int64_t blocks = ((pn + NR * W - 1) / (NR * W)) * row_blocks;
          pf.per = (lines + blocks - 1) / blocks;
        }
      }
      for (int64_t j0 = 0; j0 < pn; j0 += NR * W) {
        const int64_t cols = pn - j0 < NR * W ? pn - j0 : NR * W;
        const int nv = static_cast<int>((cols + W - 1) / W);
        const int last = static_cast<int>(cols - (nv - 1) * W);
        Part<T> pj[2] = {part[0], part[1]};
        for (Part<T>& pt : pj) {
          if (pt.k > 0) pt.p += j0;
        }
        T* cj = s.c + p0 + j0;
        const T* ij = s.init ? s.init + p0 + j0 : s.init;
        T* copyj = copy ? copy + p0 + j0 : copy;
        const T* auxj = s.aux ? s.aux + p0 + j0 : s.aux;
        T* sumsj = sums ? sums + p0 + j0 : sums;
        if (nv == NR) {
          column_block<V, NR, ACM>(rows, pj, PC, cj, s.ldc, start, ij, s.ld_init, copyj,
                                   ld_copy, auxj, sumsj, last, e, pf, s.c_far);
        } else if (nv == 1) {
          column_block<V, 1, ACM>(rows, pj, PC, cj, s.ldc, start, ij, s.ld_init, copyj,
                                  ld_copy, auxj, sumsj, last, e, pf, s.c_far);
        } else if constexpr (NR > 2) {
          if (nv == 2) {
            column_block<V, 2, ACM>(rows, pj, PC, cj, s.ldc, start, ij, s.ld_init, copyj,
                                    ld_copy, auxj, sumsj, last, e, pf, s.c_far);
          } else if constexpr (NR > 3) {
            if (nv == 3) {
              column_block<V, 3, ACM>(rows, pj, PC, cj, s.ldc, start, ij, s.ld_init, copyj,
                                      ld_copy, auxj, sumsj, last, e, pf, s.c_far);
            }
          }
        }
      }
      q0 += kc;
    } while (q0 < k);
  }
}

// The matrix-vector form of a forward step's recurrent product, on W itself (kernels.h, gemv_t):
// for one row x of A, the dot products of x with JR rows of W ([*, k] row-major, row stride ldw),
// each row read from start to end (JR streams, which the hardware prefetchers follow), two vectors
// of partial sums a row; out[j] = their sum, still a vector (gemv_t_impl sums its lanes).
template <class V, int JR>
static inline __attribute__((always_inline)) void gemv_block(int64_t k, const typename V::T* x,
                                                            const typename V::T* w, int64_t ldw,
                                                            typename V::reg* out) {
  using reg = typename V::reg;
  constexpr int W = V::W;
  reg s[JR][2];
#pragma GCC unroll 8
  for (int j = 0; j < JR; ++j) s[j][0] = s[j][1] = V::zero();
  int64_t q = 0;
  for (; q + 2 * W <= k; q += 2 * W) {
    const reg x0 = V::load(x + q), x1 = V::load(x + q + W);
#pragma GCC unroll 8
    for (int j = 0; j < JR; ++j) {
      s[j][0] = V::fma(x0, V::load(w + j * ldw + q), s[j][0]);
      s[j][1] = V::fma(x1, V::load(w + j * ldw + q + W), s[j][1]);
    }
  }
  if (q + W <= k) {
    const reg x0 = V::load(x + q);
    for (int j = 0; j < JR; ++j) s[j][0] = V::fma(x0, V::load(w + j * ldw + q), s[j][0]);
    q += W;
  }
  if (q < k) {  // the last k % W entries (masked loads give zero lanes past them)
    const int left = static_cast<int>(k - q);
    const reg x0 = V::loadn(x + q, left);
    for (int j = 0; j < JR; ++j) s[j][1] = V::fma(x0, V::loadn(w + j * ldw + q, left), s[j][1]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < JR; ++j) out[j] = V::add(s[j][0], s[j][1]);
}

// C[r, j] = (C[r, j] +) sum_q A[r, q] W[j, q]: one row of A at a time (W read once a row), W's
// rows in blocks of 4 (8 vectors of sums), or, with 64-byte vectors, one at a time where W is
// too large to stay in L2 between calls: from L3 one row's stream at a time ran 8-20% faster
// there, and 2-6% slower where W is about L2's size; with 32-byte vectors (AVX2), whose one-row
// iterations cover a line each, mostly slower (benchmarks/NOTES.md section 96). The sums of W
// rows at a time have their lanes added at once, transposed (V::transpose) and summed as vectors
// (a scalar loop over the lanes cost ~20 instructions a sum, a third of the time at k = 1024).
template <class V>
static void gemv_t_impl(int64_t rows, int64_t n, int64_t k, const typename V::T* a, int64_t lda,
                        const typename V::T* w, int64_t ldw, bool accumulate, typename V::T* c,
                        int64_t ldc) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::W, J = 4;
  const bool streams = W * sizeof(T) >= 64 &&
                       n * k * static_cast<int64_t>(sizeof(T)) > 3 * kStreamWeightBytes / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = a + r * lda;
    T* cr = c + r * ldc;
    for (int64_t j0 = 0; j0 < n; j0 += W) {
      const int jn = static_cast<int>(n - j0 < W ? n - j0 : W);
      reg tot[W];
      int j = 0;
      if (!streams) {
        for (; j + J <= jn; j += J) gemv_block<V, J>(k, x, w + (j0 + j) * ldw, ldw, tot + j);
      }
      for (; j < jn; ++j) gemv_block<V, 1>(k, x, w + (j0 + j) * ldw, ldw, tot + j);
      for (; j < W; ++j) tot[j] = V::zero();
      V::transpose(tot);
      reg sum = tot[0];
      for (int i = 1; i < W; ++i) sum = V::add(sum, tot[i]);
      alignas(64) T sums[W];
      V::store(sums, sum);
      for (int i = 0; i < jn; ++i) cr[j0 + i] = accumulate ? cr[j0 + i] + sums[i] : sums[i];
    }
  }
}

// pack_weight's transposing case (kernels.h): P[q, j] = W[j, q], W [n, k] with row stride ldw,
// panels of PC columns (a multiple of V::W) holding columns [col_begin, col_end). Tiles of V::W x
// V::W: W rows of W loaded as vectors, transposed in registers (V::transpose), stored as W rows of
// P; rows past n give zero columns.
template <class V>
static void pack_t_impl(const typename V::T* w, int64_t ldw, int64_t n, int64_t k,
                        typename V::T* p, int64_t col_begin, int64_t col_end, int64_t PC) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::W;
  for (int64_t j0 = col_begin; j0 < n && j0 < col_end; j0 += PC) {
    T* panel = p + (j0 / PC) * k * PC;
    // W rows of W at a time, each read from start to end: W streams, which the hardware
    // prefetchers follow; a panel's PC rows at once (64 streams) packed 10-30% slower.
    for (int64_t jj = 0; jj < PC; jj += W) {
      const int64_t j = j0 + jj;
      const int64_t rows = n - j < 0 ? 0 : (n - j < W ? n - j : W);
      for (int64_t q0 = 0; q0 < k; q0 += W) {
        const int qn = static_cast<int>(k - q0 < W ? k - q0 : W);
        reg r[W];
        for (int i = 0; i < W; ++i) {
          const T* src = w + (j + i) * ldw + q0;
          r[i] = i >= rows ? V::zero() : (qn == W ? V::load(src) : V::loadn(src, qn));
        }
        V::transpose(r);
        for (int i = 0; i < qn; ++i) V::store(panel + (q0 + i) * PC + jj, r[i]);
      }
    }
  }
}

// tanh for float32 lanes: |x| P(z) / Q(z), z = x^2, P and Q of degree 4 in z (a minimax fit of
// tanh(x) / x for relative error on [0, 9]: 2.1e-8), |x| capped at 9 first (tanh rounds to 1 from
// 9.01 on, so +-inf and huge inputs give exactly +-1, as torch's tanh does), then the sign of x
// (tanh(-0) = -0); NaN propagates. Both coefficient lists start at 1, so tiny inputs come back
// unchanged. 16 vector operations: half of the former exp-based form's (Cephes tanhf: a
// polynomial below 0.625, 1 - 2 / (e^{2|x|} + 1) above): ~12 cycles a vector against ~22 on an
// Intel Xeon VM, where the epilogue's tanh had been 10-13% of a step at K = 256
// (benchmarks/NOTES.md section 57). Error, every float32 in [0, 10]: at most 5.3 ulp (near 1,
// where the last roundings of P, Q and the quotient add up), 0.08 ulp on average (0.72 for inputs
// uniform in [0, 10]; Cephes' form: 1.34, 0.03 and 0.24); below the rounding error of the
// pre-activation's sum it is applied to.
template <class V>
static inline __attribute__((always_inline)) typename V::reg tanh_f32(typename V::reg x) {
  using reg = typename V::reg;
  const reg ax = V::min_keep_nan(V::set1(9.0f), V::abs(x));
  const reg z = V::mul(ax, ax);
  reg p = V::fma(V::set1(1.335439048e-08f), z, V::set1(2.060888073e-05f));
  p = V::fma(p, z, V::set1(3.495575860e-03f));
  p = V::fma(p, z, V::set1(1.338101476e-01f));
  p = V::fma(p, z, V::set1(1.0f));
  reg q = V::fma(V::set1(7.776445727e-07f), z, V::set1(3.285614657e-04f));
  q = V::fma(q, z, V::set1(2.587693557e-02f));
  q = V::fma(q, z, V::set1(4.671432972e-01f));
  q = V::fma(q, z, V::set1(1.0f));
  return V::copysign(V::div(V::mul(p, ax), q), x);
}

// tanh for float64 lanes: tanh(|x|) = (e^y - 1) / (e^y + 1), y = 2 min(|x|, 20) (tanh rounds to 1
// from ~19.1 on, so +-inf gives exactly +-1), with Cephes' exp: y = n ln2 + f, |f| <= ln2 / 2, and
// a Pade form on f, e^f = (q + p) / (q - p). With d = q - p, e^y - 1 = 2^n (e^f - 1) + 2^n - 1 =
// num / d, num = 2^(n+1) p + (2^n - 1) d, so tanh(|x|) = num / (num + 2 d): one division, no
// cancellation near 0 (n = 0 there, and the quotient is p / q) and no branch to select. ~23 vector
// operations, ~20 cycles a vector on an Intel Xeon VM against ~25.5 for Cephes' tanh (a polynomial
// below |x| = 0.625 and the exp above, both computed and one selected; benchmarks/NOTES.md
// section 69). Error, 4 M points against tanhl: at most 3.1 ulp (where n turns from 0 to 1, the
// sum num carrying f's negative p), 0.42 on average; -0 stays -0; NaN propagates.
template <class V>
static inline __attribute__((always_inline)) typename V::reg tanh_f64(typename V::reg x) {
  using reg = typename V::reg;
  const reg capped = V::min_keep_nan(V::set1(20.0), V::abs(x));
  const reg y = V::add(capped, capped);
  const reg n = V::round(V::mul(y, V::set1(1.4426950408889634073599)));
  reg f = V::fma(n, V::set1(-6.93145751953125e-1), y);
  f = V::fma(n, V::set1(-1.42860682030941723212e-6), f);
  const reg ff = V::mul(f, f);
  reg p = V::set1(1.26177193074810590878e-4);
  p = V::fma(p, ff, V::set1(3.02994407707441961300e-2));
  p = V::fma(p, ff, V::set1(9.99999999999999999910e-1));
  p = V::mul(p, f);
  reg q = V::set1(3.00198505138664455042e-6);
  q = V::fma(q, ff, V::set1(2.52448340349684104192e-3));
  q = V::fma(q, ff, V::set1(2.27265548208155028766e-1));
  q = V::fma(q, ff, V::set1(2.00000000000000000009e0));
  const reg d = V::sub(q, p);
  const reg two_n = V::scale_pow2(V::set1(1.0), n);
  const reg num = V::fma(V::sub(two_n, V::set1(1.0)), d, V::mul(V::add(p, p), two_n));
  return V::copysign(V::div(num, V::fma(V::set1(2.0), d, num)), x);
}
