// The tile kernels written once over 16 float lanes: the AVX-512 algorithm.
//
// `Lane16Kernels<L>` holds every loop of the `TileKernels` table (tile_kernels.h) in terms of a lane type `L`
// (16 floats `L::F`, 16 uint32 `L::I`, a 16-lane predicate `L::M`, and the operations below). Two lane types
// instantiate it:
//   - tile_kernels_avx512.cc: `L::F` is one __m512 (zmm), predicates are __mmask16: the path AVX-512 CPUs run;
//   - tile_kernels_avx512_emulated.cc: `L::F` is two __m256 (a pair of ymm), predicates are two lane masks: the same
//     algorithm on AVX2, so a host without AVX-512 runs and tests it.
// Every operation of a lane type is lane-wise IEEE float32 arithmetic (one rounding each, fused multiply-add where
// named) or exact integer arithmetic, and the horizontal reductions are one fixed tree (16 -> 8 lanes by adding the
// upper half of the register to the lower, then the AVX2 8-lane tree), so both instantiations compute the same bits:
// the emulation is a faithful stand-in for the zmm code, not an approximation of it.
//
// Against the AVX2 table the results are:
//   - bit-identical for gemm (each C element is the same fused-multiply-add chain over k in order, whatever the
//     register blocking), row_max, multiply, scale, softmax_grad, the exp values, the dropout codes and factors, and
//     dgamma / dbeta of the LayerNorm backward;
//   - within reduction-order rounding for the sums (exp_shift_sum's return, dot, the LayerNorm statistics and the
//     backward's two row sums): AVX2 sums lane c mod 8 sequentially then a 3-level tree, this code lane c mod 16 then
//     a 4-level tree, so for n terms the two differ by at most (ceil(n/8) + ceil(n/16) + 7) * 2^-24 * sum |term|
//     (first order; tests/ops/test_avx512_paths.py checks that bound).
//
// Tails use predicates (masked loads and stores; masked-off lanes load as 0, or as -inf for row_max), never scalar
// loops, so every element goes through the same vector arithmetic.
//
// The including file defines MFGF_LANE16_TARGET (the target attribute of its lane type) before including this
// header; everything here is in an unnamed namespace, so each instantiation stays inside its own translation unit
// and no AVX-512 code can be shared with another table through a common template instance.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tile_kernels.h"

#ifndef MFGF_LANE16_TARGET
#error "define MFGF_LANE16_TARGET (the lane type's target attribute) before including tile_kernels_lane16.h"
#endif

namespace mfgf {
namespace {

template <class L>
struct Lane16Kernels {
  using F = typename L::F;
  using I = typename L::I;
  using M = typename L::M;
  static constexpr int kLanes = 16;
  // Rows of C per micro-tile, times two 16-float panels: 24 accumulators + 2 of B + 1 broadcast of A = 27 of the
  // 32 zmm registers. The emulation uses the same blocking, so it runs the same loop structure (it spills).
  static constexpr int kMicroRows = 12;
  static constexpr int kMicroPanels = 2;

  // exp as in tile_kernels_avx2.cc's exp_ps (the softmax's), operation for operation (the same constants, rounding
  // and order): x clamped at -88, n by the magic-number rounding, 2^n from the low bits of t.
  MFGF_LANE16_TARGET static inline F exp(F x) {
    x = L::max(x, L::set1(-88.0f));
    const F magic = L::set1(12583039.0f);  // 1.5 * 2^23 + 127
    const F t = L::fmadd(x, L::set1(1.44269504088896341f), magic);
    const F n = L::sub(t, magic);
    F r = L::fnmadd(n, L::set1(0.693359375f), x);
    r = L::fnmadd(n, L::set1(-2.12194440e-4f), r);
    F poly = L::set1(1.0f / 720.0f);
    poly = L::fmadd(poly, r, L::set1(1.0f / 120.0f));
    poly = L::fmadd(poly, r, L::set1(1.0f / 24.0f));
    poly = L::fmadd(poly, r, L::set1(1.0f / 6.0f));
    poly = L::fmadd(poly, r, L::set1(0.5f));
    poly = L::fmadd(poly, r, L::set1(1.0f));
    poly = L::fmadd(poly, r, L::set1(1.0f));
    return L::mul(poly, L::exponent_from_low_bits(t));
  }

  // mix32 (tile_kernels.h) on 16 lanes.
  MFGF_LANE16_TARGET static inline I mix32(I x) {
    const I multiplier = L::set1_i(kMixMultiplier);
    x = L::mullo_i(L::xor_i(L::template srli_i<16>(x), x), multiplier);
    x = L::mullo_i(L::xor_i(L::template srli_i<16>(x), x), multiplier);
    return L::xor_i(L::template srli_i<16>(x), x);
  }

  // C[Rows x (Panels x 16) at (i0, j0)]; `last_cols` (1..16) columns are valid in the last panel, whose loads and
  // stores are masked when it is partial, so B and C are never touched past their edge.
  template <int Rows, int Panels>
  MFGF_LANE16_TARGET static void micro_tile(const GemmArgs& g, int i0, int j0, int last_cols) {
    // Every loop over rows and panels is unrolled up front (as in the AVX2 micro-kernel), so the accumulators
    // become registers; left to the late unroller, GCC keeps them in a stack array and stores all 24 every step.
    F acc[Rows][Panels];
    #pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r)
      #pragma GCC unroll 16
      for (int q = 0; q < Panels; ++q) acc[r][q] = L::zero();
    const float* a_rows[Rows];
    #pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) a_rows[r] = g.a + (i0 + r) * g.a_row_stride;
    const float* panels[Panels];
    #pragma GCC unroll 16
    for (int q = 0; q < Panels; ++q) panels[q] = g.b + (j0 / kPanelWidth + q) * g.b_panel_stride;
    const int64_t a_step = g.a_col_stride, b_step = g.b_row_stride;
    const bool full = last_cols == kPanelWidth;
    const M last_mask = L::mask_first(last_cols);

    if (full) {
      for (int p = 0; p < g.k; ++p) {
        F b[Panels];
        #pragma GCC unroll 16
        for (int q = 0; q < Panels; ++q) b[q] = L::load(panels[q] + p * b_step);
        #pragma GCC unroll 16
        for (int r = 0; r < Rows; ++r) {
          const F a = L::set1(a_rows[r][p * a_step]);
          #pragma GCC unroll 16
          for (int q = 0; q < Panels; ++q) acc[r][q] = L::fmadd(a, b[q], acc[r][q]);
        }
      }
    } else {
      for (int p = 0; p < g.k; ++p) {
        F b[Panels];
        #pragma GCC unroll 16
        for (int q = 0; q + 1 < Panels; ++q) b[q] = L::load(panels[q] + p * b_step);
        b[Panels - 1] = L::load_masked(panels[Panels - 1] + p * b_step, last_mask);
        #pragma GCC unroll 16
        for (int r = 0; r < Rows; ++r) {
          const F a = L::set1(a_rows[r][p * a_step]);
          #pragma GCC unroll 16
          for (int q = 0; q < Panels; ++q) acc[r][q] = L::fmadd(a, b[q], acc[r][q]);
        }
      }
    }

    const F alpha = L::set1(g.alpha);
    #pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      float* c_row = g.c + (i0 + r) * g.ldc + j0;
      #pragma GCC unroll 16
      for (int q = 0; q < Panels; ++q) {
        float* c = c_row + q * kPanelWidth;
        const bool masked = !full && q == Panels - 1;
        F out = L::mul(alpha, acc[r][q]);
        if (g.mode != Accumulate::kOverwrite) {
          const F old = masked ? L::load_masked(c, last_mask) : L::load(c);
          const F keep = g.mode == Accumulate::kAdd ? L::set1(1.0f) : L::set1(g.row_scale[i0 + r]);
          out = L::fmadd(keep, old, out);
        }
        if (masked) {
          L::store_masked(c, last_mask, out);
        } else {
          L::store(c, out);
        }
      }
    }
  }

  // The last `rows` (< kMicroRows) rows of a strip: micro_tile<rows> chosen by compile-time recursion.
  template <int Rows, int Panels>
  MFGF_LANE16_TARGET static void row_tail(const GemmArgs& g, int i0, int j0, int last_cols, int rows) {
    if constexpr (Rows > 0) {
      if (rows == Rows) {
        micro_tile<Rows, Panels>(g, i0, j0, last_cols);
      } else {
        row_tail<Rows - 1, Panels>(g, i0, j0, last_cols, rows);
      }
    }
  }

  template <int Panels>
  MFGF_LANE16_TARGET static void column_strip(const GemmArgs& g, int j0, int last_cols) {
    int i0 = 0;
    for (; i0 + kMicroRows <= g.m; i0 += kMicroRows) micro_tile<kMicroRows, Panels>(g, i0, j0, last_cols);
    row_tail<kMicroRows - 1, Panels>(g, i0, j0, last_cols, g.m - i0);
  }

  // Strips of two panels (32 columns) outer, row tiles inner: 2 panels of B (k x 32, 32 KB for k = 256) stay in L1
  // or L2 while every row tile of A streams past them. A last strip of at most 16 columns uses one panel.
  MFGF_LANE16_TARGET static void gemm(const GemmArgs& g) {
    constexpr int kStrip = kMicroPanels * kPanelWidth;
    for (int j0 = 0; j0 < g.n; j0 += kStrip) {
      const int cols = std::min(kStrip, g.n - j0);
      if (cols > kPanelWidth) {
        column_strip<2>(g, j0, cols - kPanelWidth);
      } else {
        column_strip<1>(g, j0, cols);
      }
    }
  }

  MFGF_LANE16_TARGET static float row_max(const float* x, int n) {
    F best = L::set1(-INFINITY);
    int c = 0;
    for (; c + kLanes <= n; c += kLanes) best = L::max(best, L::load(x + c));
    if (c < n) best = L::max(best, L::load_masked_fill(x + c, L::mask_first(n - c), L::set1(-INFINITY)));
    return L::reduce_max(best);
  }

  MFGF_LANE16_TARGET static float exp_shift_sum(float* x, int n, float shift) {
    const F shift_v = L::set1(shift);
    F sum = L::zero();
    int c = 0;
    for (; c + kLanes <= n; c += kLanes) {
      const F e = exp(L::sub(L::load(x + c), shift_v));
      L::store(x + c, e);
      sum = L::add(sum, e);
    }
    if (c < n) {
      const M mask = L::mask_first(n - c);
      const F e = L::keep_where(mask, exp(L::sub(L::load_masked(x + c, mask), shift_v)));
      L::store_masked(x + c, mask, e);
      sum = L::add(sum, e);
    }
    return L::reduce_add(sum);
  }

  MFGF_LANE16_TARGET static void dropout_column_codes(uint32_t* codes, int n, uint32_t first) {
    const I lanes = L::iota_i();
    for (int c = 0; c < n; c += kLanes) {
      const I code = mix32(L::add_i(L::set1_i(first + static_cast<uint32_t>(c)), lanes));
      if (c + kLanes <= n) {
        L::store_i(codes + c, code);
      } else {
        L::store_masked_i(codes + c, L::mask_first(n - c), code);
      }
    }
  }

  MFGF_LANE16_TARGET static void dropout_factors(float* factor, int n, const DropoutSpec& spec, uint32_t row_key,
                                                 const uint32_t* codes) {
    const I key = L::set1_i(row_key);
    // word >> 8 and the threshold are below 2^24 + 1, so the signed compare is the unsigned one.
    const I threshold = L::set1_i(spec.threshold);
    const F keep_scale = L::set1(spec.keep_scale);
    for (int c = 0; c < n; c += kLanes) {
      const bool full = c + kLanes <= n;
      const M mask = full ? L::mask_first(kLanes) : L::mask_first(n - c);
      const I code = full ? L::load_i(codes + c) : L::load_masked_i(codes + c, mask);
      const I high = L::template srli_i<kDropoutWordShift>(mix32(L::add_i(key, code)));
      const F value = L::zero_where(L::gt_i(threshold, high), keep_scale);
      if (full) {
        L::store(factor + c, value);
      } else {
        L::store_masked(factor + c, mask, value);
      }
    }
  }

  MFGF_LANE16_TARGET static void multiply(float* x, const float* factor, int n) {
    int c = 0;
    for (; c + kLanes <= n; c += kLanes) L::store(x + c, L::mul(L::load(x + c), L::load(factor + c)));
    if (c < n) {
      const M mask = L::mask_first(n - c);
      L::store_masked(x + c, mask, L::mul(L::load_masked(x + c, mask), L::load_masked(factor + c, mask)));
    }
  }

  // dp z - d as one explicit fused multiply-subtract (as the AVX2 table): left as a multiply and a subtraction, the
  // compiler contracts them in some loops and not in others, and bodies and tails would round differently.
  MFGF_LANE16_TARGET static inline F softmax_grad_lanes(F dp, F p, const float* factor, M mask, bool full, F d_v) {
    if (factor) return L::mul(p, L::fmsub(dp, full ? L::load(factor) : L::load_masked(factor, mask), d_v));
    return L::mul(p, L::sub(dp, d_v));
  }

  MFGF_LANE16_TARGET static void softmax_grad(float* dpd, const float* p, const float* factor, float d, int n) {
    const F d_v = L::set1(d);
    const M all = L::mask_first(kLanes);
    int c = 0;
    for (; c + kLanes <= n; c += kLanes) {
      L::store(dpd + c, softmax_grad_lanes(L::load(dpd + c), L::load(p + c), factor ? factor + c : nullptr, all,
                                           true, d_v));
    }
    if (c < n) {
      const M mask = L::mask_first(n - c);
      L::store_masked(dpd + c, mask,
                      softmax_grad_lanes(L::load_masked(dpd + c, mask), L::load_masked(p + c, mask),
                                         factor ? factor + c : nullptr, mask, false, d_v));
    }
  }

  MFGF_LANE16_TARGET static float dot(const float* a, const float* b, int n) {
    F sum0 = L::zero(), sum1 = L::zero();
    int c = 0;
    for (; c + 2 * kLanes <= n; c += 2 * kLanes) {
      sum0 = L::fmadd(L::load(a + c), L::load(b + c), sum0);
      sum1 = L::fmadd(L::load(a + c + kLanes), L::load(b + c + kLanes), sum1);
    }
    for (; c < n; c += kLanes) {
      const M mask = L::mask_first(n - c);
      sum0 = L::fmadd(L::load_masked(a + c, mask), L::load_masked(b + c, mask), sum0);
    }
    return L::reduce_add(L::add(sum0, sum1));
  }

  MFGF_LANE16_TARGET static void scale(float* x, int n, float s) {
    const F s_v = L::set1(s);
    int c = 0;
    for (; c + kLanes <= n; c += kLanes) L::store(x + c, L::mul(L::load(x + c), s_v));
    if (c < n) {
      const M mask = L::mask_first(n - c);
      L::store_masked(x + c, mask, L::mul(L::load_masked(x + c, mask), s_v));
    }
  }

  // z = x (+ residual) over the lanes of `mask` (0 elsewhere).
  MFGF_LANE16_TARGET static inline F load_sum(const float* x, const float* residual, int c, int width, M* mask) {
    if (c + kLanes <= width) {
      *mask = L::mask_first(kLanes);
      F z = L::load(x + c);
      return residual ? L::add(z, L::load(residual + c)) : z;
    }
    *mask = L::mask_first(width - c);
    F z = L::load_masked(x + c, *mask);
    return residual ? L::add(z, L::load_masked(residual + c, *mask)) : z;
  }

  MFGF_LANE16_TARGET static inline F load_lanes(const float* x, M mask, bool full) {
    return full ? L::load(x) : L::load_masked(x, mask);
  }

  MFGF_LANE16_TARGET static inline void store_lanes(float* x, M mask, bool full, F value) {
    if (full) {
      L::store(x, value);
    } else {
      L::store_masked(x, mask, value);
    }
  }

  MFGF_LANE16_TARGET static void layer_norm_row(const float* x, const float* residual, const float* gamma,
                                                const float* beta, float eps, int width, float* y, float* mean_out,
                                                float* rstd_out) {
    // As the AVX2 row: z = x + residual staged in y, the mean, the centred sum of squares, then the output.
    F sum_v = L::zero();
    M mask;
    for (int c = 0; c < width; c += kLanes) {
      const F z = load_sum(x, residual, c, width, &mask);
      store_lanes(y + c, mask, c + kLanes <= width, z);
      sum_v = L::add(sum_v, z);
    }
    const float mean = L::reduce_add(sum_v) / width;
    const F mean_v = L::set1(mean);
    F squares_v = L::zero();
    for (int c = 0; c < width; c += kLanes) {
      const bool full = c + kLanes <= width;
      mask = L::mask_first(width - c);
      // Masked-off lanes load 0 and would add mean^2: keep only the valid ones.
      const F centred = L::keep_where(mask, L::sub(load_lanes(y + c, mask, full), mean_v));
      squares_v = L::fmadd(centred, centred, squares_v);
    }
    const float rstd = 1.0f / std::sqrt(L::reduce_add(squares_v) / width + eps);
    const F rstd_v = L::set1(rstd);
    for (int c = 0; c < width; c += kLanes) {
      const bool full = c + kLanes <= width;
      mask = L::mask_first(width - c);
      const F zhat = L::mul(L::sub(load_lanes(y + c, mask, full), mean_v), rstd_v);
      store_lanes(y + c, mask, full,
                  L::fmadd(zhat, load_lanes(gamma + c, mask, full), load_lanes(beta + c, mask, full)));
    }
    *mean_out = mean;
    *rstd_out = rstd;
  }

  MFGF_LANE16_TARGET static void layer_norm_row_backward(const float* dy, const float* x, const float* residual,
                                                         const float* gamma, float mean, float rstd, float dmean,
                                                         float drstd, int width, float* dx, float* dgamma,
                                                         float* dbeta) {
    const F mean_v = L::set1(mean), rstd_v = L::set1(rstd);
    F sum_g_v = L::zero(), sum_g_zhat_v = L::zero();
    M mask;
    for (int c = 0; c < width; c += kLanes) {
      const bool full = c + kLanes <= width;
      const F z = load_sum(x, residual, c, width, &mask);
      // Masked-off lanes have dy = gamma = 0, so g = 0 there and the sums are unaffected.
      const F zhat = L::mul(L::sub(z, mean_v), rstd_v);
      const F d = load_lanes(dy + c, mask, full);
      const F g = L::mul(d, load_lanes(gamma + c, mask, full));
      sum_g_v = L::add(sum_g_v, g);
      sum_g_zhat_v = L::fmadd(g, zhat, sum_g_zhat_v);
      store_lanes(dgamma + c, mask, full, L::fmadd(d, zhat, load_lanes(dgamma + c, mask, full)));
      store_lanes(dbeta + c, mask, full, L::add(d, load_lanes(dbeta + c, mask, full)));
    }
    const float mean_g = L::reduce_add(sum_g_v) / width, mean_g_zhat = L::reduce_add(sum_g_zhat_v) / width;
    const float through_mean = dmean / width, through_rstd = -drstd * rstd * rstd / width;
    // dx = rstd (g - mean(g)) + dmean / H  -  zhat (rstd mean(g zhat) - through_rstd), as in the AVX2 row.
    const F offset_v = L::set1(through_mean - rstd * mean_g);
    const F zhat_coef_v = L::set1(through_rstd - rstd * mean_g_zhat);
    for (int c = 0; c < width; c += kLanes) {
      const bool full = c + kLanes <= width;
      const F z = load_sum(x, residual, c, width, &mask);
      const F zhat = L::mul(L::sub(z, mean_v), rstd_v);
      const F g = L::mul(load_lanes(dy + c, mask, full), load_lanes(gamma + c, mask, full));
      store_lanes(dx + c, mask, full, L::fmadd(zhat, zhat_coef_v, L::fmadd(rstd_v, g, offset_v)));
    }
  }

  // GELU has no 16-lane version yet: the table's gelu entries are filled by with_avx2_gelu.
  static TileKernels table(const char* name) {
    return {name,         gemm,     row_max,      exp_shift_sum, dropout_column_codes,
            dropout_factors, multiply, softmax_grad, dot,          scale,
            layer_norm_row, layer_norm_row_backward, nullptr, nullptr};
  }
};

// The AVX2 table's GELU in a 16-lane table (every CPU that runs AVX-512F or the emulation runs AVX2 + FMA). Left
// null in a build without the AVX2 table (the intrinsics-model build of the tests): gelu.cc then runs the portable one.
inline TileKernels with_avx2_gelu(TileKernels table) {
  const TileKernels* avx2 = avx2_tile_kernels();
  if (!avx2) return table;
  table.gelu = avx2->gelu;
  table.gelu_backward = avx2->gelu_backward;
  return table;
}

}  // namespace
}  // namespace mfgf
