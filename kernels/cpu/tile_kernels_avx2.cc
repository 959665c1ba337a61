// AVX2 + FMA versions of the tile kernels.
//
// Every function carries a target attribute instead of the file being compiled with -mavx2: the library must load,
// and fall back to the portable table, on an x86-64 without AVX2. Nothing here is inline in a header, so no AVX2
// code can leak into the portable path through a shared template instantiation.
#include "tile_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define MFGF_AVX2 __attribute__((target("avx2,fma")))

namespace mfgf {
namespace {

// Rows of C held in registers by the GEMM micro-kernel: 6 rows x 2 vectors = 12 accumulators, plus 2 vectors of B
// and one broadcast of A, is 15 of the 16 YMM registers.
constexpr int kMicroRows = 6;

MFGF_AVX2 inline __m256i lane_mask(int valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

MFGF_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

MFGF_AVX2 inline float horizontal_max(__m256 v) {
  __m128 best = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  best = _mm_max_ps(best, _mm_movehl_ps(best, best));
  best = _mm_max_ss(best, _mm_movehdup_ps(best));
  return _mm_cvtss_f32(best);
}

// Both exps below are exp(x) = 2^n exp(r) with n = round(x / ln 2), |r| <= ln(2) / 2, and exp(r) by its Taylor
// series; ln 2 is split in a part exact in float (n * ln2_hi has no rounding error for |n| < 2^9) and the remainder.

// r = x - n ln 2, with ln 2 in its two parts.
MFGF_AVX2 inline __m256 reduced_argument(__m256 x, __m256 n) {
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  return _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
}

// exp(r) by Horner's rule, given `poly` = the series' terms from r^6 / 6! on divided by r^6 (1/720 alone, or
// 1/720 + r / 5040): the steps from the r^5 coefficient down, which both exps share.
MFGF_AVX2 inline __m256 taylor_exp(__m256 poly, __m256 r) {
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 120.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 24.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 6.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(0.5f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
  return _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
}

// The softmax's exp (attention, log-sum-exp), for x <= 88 (the callers pass scores minus their running maximum, so
// x <= 0 in use). Taylor to r^6: the first omitted term, r^7 / 7!, is at most 1.2e-7 relative, about two float ulps,
// far inside the kernels' 1e-5 tolerance (the r^7 term cost ~3% of the attention forward). n comes from the
// magic-number rounding: t = x log2(e) + (1.5 * 2^23 + 127) rounds to an integer (nearest-even, as a round
// instruction would) whose low bits are n + 127, so t's bit pattern shifted left by 23 is 2^n: no round, convert,
// compare or mask instructions (20% faster than with them, 5.3 -> 4.2 us per 72 x 128 tile). x is clamped at -88:
// from x < -87.68 (n = -127) the exponent field is 0 and the result exactly 0, which is how masked scores (-inf)
// become zero probabilities; between -87.68 and -87.33 the result is exp(x) below float's normal range.
MFGF_AVX2 inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-88.0f));
  const __m256 magic = _mm256_set1_ps(12583039.0f);  // 1.5 * 2^23 + 127
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  const __m256 poly = taylor_exp(_mm256_set1_ps(1.0f / 720.0f), reduced_argument(x, n));
  return _mm256_mul_ps(poly, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

// The GELU's exp: Taylor to r^7 (the first omitted term, r^8 / 8!, is below 5.2e-9), any x; inputs below -87.33
// (where exp leaves the normal range) give exactly 0.
MFGF_AVX2 inline __m256 exp_accurate_ps(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.33f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = reduced_argument(x, n);
  const __m256 from_sixth = _mm256_fmadd_ps(_mm256_set1_ps(1.0f / 5040.0f), r, _mm256_set1_ps(1.0f / 720.0f));
  const __m256 poly = taylor_exp(from_sixth, r);
  const __m256i two_to_n =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(poly, _mm256_castsi256_ps(two_to_n)));
}

// C[rows x 16 at (i0, j0)] from one column panel of B. `cols` < 16 only in the last panel: loads and stores are
// masked there, so B and C are never touched past their edge.
template <int Rows>
MFGF_AVX2 inline void micro_tile(const GemmArgs& g, int i0, int j0, const float* panel, int cols) {
  __m256 acc[Rows][2];
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();

  const float* a_rows[Rows];
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) a_rows[r] = g.a + (i0 + r) * g.a_row_stride;
  const int64_t a_step = g.a_col_stride, b_step = g.b_row_stride;
  const bool full = cols == kPanelWidth;
  const __m256i mask0 = lane_mask(cols), mask1 = lane_mask(cols - 8);

  const float* b_row = panel;
  if (full) {
    for (int p = 0; p < g.k; ++p, b_row += b_step) {
      const __m256 b0 = _mm256_loadu_ps(b_row), b1 = _mm256_loadu_ps(b_row + 8);
#pragma GCC unroll 6
      for (int r = 0; r < Rows; ++r) {
        const __m256 a = _mm256_broadcast_ss(a_rows[r] + p * a_step);
        acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
      }
    }
  } else {
    for (int p = 0; p < g.k; ++p, b_row += b_step) {
      const __m256 b0 = _mm256_maskload_ps(b_row, mask0), b1 = _mm256_maskload_ps(b_row + 8, mask1);
#pragma GCC unroll 6
      for (int r = 0; r < Rows; ++r) {
        const __m256 a = _mm256_broadcast_ss(a_rows[r] + p * a_step);
        acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
      }
    }
  }

  const __m256 alpha = _mm256_set1_ps(g.alpha);
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) {
    float* c = g.c + (i0 + r) * g.ldc + j0;
    __m256 out0 = _mm256_mul_ps(alpha, acc[r][0]), out1 = _mm256_mul_ps(alpha, acc[r][1]);
    if (g.mode != Accumulate::kOverwrite) {
      const __m256 old0 = full ? _mm256_loadu_ps(c) : _mm256_maskload_ps(c, mask0);
      const __m256 old1 = full ? _mm256_loadu_ps(c + 8) : _mm256_maskload_ps(c + 8, mask1);
      const __m256 keep = g.mode == Accumulate::kAdd ? _mm256_set1_ps(1.0f) : _mm256_set1_ps(g.row_scale[i0 + r]);
      out0 = _mm256_fmadd_ps(keep, old0, out0);
      out1 = _mm256_fmadd_ps(keep, old1, out1);
    }
    if (full) {
      _mm256_storeu_ps(c, out0);
      _mm256_storeu_ps(c + 8, out1);
    } else {
      _mm256_maskstore_ps(c, mask0, out0);
      _mm256_maskstore_ps(c + 8, mask1, out1);
    }
  }
}

// Panels outer, row strips inner: one panel of B (k x 16, at most 16 KB for k = 256) stays in L1 while every
// strip of A streams past it.
MFGF_AVX2 void gemm(const GemmArgs& g) {
  for (int j0 = 0; j0 < g.n; j0 += kPanelWidth) {
    const int cols = std::min(kPanelWidth, g.n - j0);
    const float* panel = g.b + (j0 / kPanelWidth) * g.b_panel_stride;
    int i0 = 0;
    for (; i0 + kMicroRows <= g.m; i0 += kMicroRows) micro_tile<kMicroRows>(g, i0, j0, panel, cols);
    switch (g.m - i0) {
      case 5:
        micro_tile<5>(g, i0, j0, panel, cols);
        break;
      case 4:
        micro_tile<4>(g, i0, j0, panel, cols);
        break;
      case 3:
        micro_tile<3>(g, i0, j0, panel, cols);
        break;
      case 2:
        micro_tile<2>(g, i0, j0, panel, cols);
        break;
      case 1:
        micro_tile<1>(g, i0, j0, panel, cols);
        break;
      default:
        break;
    }
  }
}

MFGF_AVX2 float row_max(const float* x, int n) {
  __m256 best = _mm256_set1_ps(-INFINITY);
  int c = 0;
  for (; c + 8 <= n; c += 8) best = _mm256_max_ps(best, _mm256_loadu_ps(x + c));
  float result = horizontal_max(best);
  for (; c < n; ++c) result = std::max(result, x[c]);
  return result;
}

MFGF_AVX2 float exp_shift_sum(float* x, int n, float shift) {
  const __m256 shift_v = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), shift_v));
    _mm256_storeu_ps(x + c, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (c < n) {
    // The tail goes through the same vector exp (masked) so every element of a row is rounded the same way.
    const __m256i mask = lane_mask(n - c);
    const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + c, mask), shift_v)),
                                   _mm256_castsi256_ps(mask));
    _mm256_maskstore_ps(x + c, mask, e);
    sum = _mm256_add_ps(sum, e);
  }
  return horizontal_sum(sum);
}

// mix32 (tile_kernels.h) on eight lanes: AVX2 has the 32-bit low-half multiply, shifts and xor it needs.
MFGF_AVX2 inline __m256i mix32_x8(__m256i x) {
  const __m256i multiplier = _mm256_set1_epi32(static_cast<int>(kMixMultiplier));
  x = _mm256_mullo_epi32(_mm256_xor_si256(_mm256_srli_epi32(x, 16), x), multiplier);
  x = _mm256_mullo_epi32(_mm256_xor_si256(_mm256_srli_epi32(x, 16), x), multiplier);
  return _mm256_xor_si256(_mm256_srli_epi32(x, 16), x);
}

MFGF_AVX2 void dropout_column_codes(uint32_t* codes, int n, uint32_t first) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int c = 0; c < n; c += 8) {
    const __m256i code = mix32_x8(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first + static_cast<uint32_t>(c))), lanes));
    int* out = reinterpret_cast<int*>(codes + c);
    if (c + 8 <= n) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), code);
    } else {
      _mm256_maskstore_epi32(out, lane_mask(n - c), code);
    }
  }
}

MFGF_AVX2 void dropout_factors(float* factor, int n, const DropoutSpec& spec, uint32_t row_key, const uint32_t* codes) {
  const __m256i key = _mm256_set1_epi32(static_cast<int>(row_key));
  // word >> 8 and the threshold are below 2^24 + 1, so the signed compare is the unsigned one.
  const __m256i threshold = _mm256_set1_epi32(static_cast<int>(spec.threshold));
  const __m256 keep_scale = _mm256_set1_ps(spec.keep_scale);
  for (int c = 0; c < n; c += 8) {
    const bool full = c + 8 <= n;
    const __m256i mask = full ? _mm256_set1_epi32(-1) : lane_mask(n - c);
    const int* in = reinterpret_cast<const int*>(codes + c);
    const __m256i code = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)) : _mm256_maskload_epi32(in, mask);
    const __m256i high = _mm256_srli_epi32(mix32_x8(_mm256_add_epi32(key, code)), kDropoutWordShift);
    const __m256i drop = _mm256_cmpgt_epi32(threshold, high);
    const __m256 value = _mm256_andnot_ps(_mm256_castsi256_ps(drop), keep_scale);
    if (full) {
      _mm256_storeu_ps(factor + c, value);
    } else {
      _mm256_maskstore_ps(factor + c, mask, value);
    }
  }
}

MFGF_AVX2 void multiply(float* x, const float* factor, int n) {
  int c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(x + c, _mm256_mul_ps(_mm256_loadu_ps(x + c),
       _mm256_loadu_ps(factor + c)));
  for (; c < n; ++c) x[c] *= factor[c];
}

MFGF_AVX2 void softmax_grad(float* dpd, const float* p, const float* factor, float d, int n) {
  const __m256 d_v = _mm256_set1_ps(d);
  int c = 0;
  // dp z - d is one explicit fused multiply-subtract, and the tail goes through the same vector arithmetic (masked):
  // a multiply and a subtraction are contracted by the compiler in some loops and not others, so the last columns
  // would round differently from the rest (and from the 16-lane tables, whose tails start elsewhere).
  for (; c + 8 <= n; c += 8) {
    const __m256 dp = _mm256_loadu_ps(dpd + c);
    const __m256 centred = factor ? _mm256_fmsub_ps(dp, _mm256_loadu_ps(factor + c), d_v) : _mm256_sub_ps(dp, d_v);
    _mm256_storeu_ps(dpd + c, _mm256_mul_ps(_mm256_loadu_ps(p + c), centred));
  }
  if (c < n) {
    const __m256i mask = lane_mask(n - c);
    const __m256 dp = _mm256_maskload_ps(dpd + c, mask);
    const __m256 centred =
        factor ? _mm256_fmsub_ps(dp, _mm256_maskload_ps(factor + c, mask), d_v) : _mm256_sub_ps(dp, d_v);
    _mm256_maskstore_ps(dpd + c, mask, _mm256_mul_ps(_mm256_maskload_ps(p + c, mask), centred));
  }
}

MFGF_AVX2 float dot(const float* a, const float* b, int n) {
  __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
  int c = 0;
  for (; c + 16 <= n; c += 16) {
    sum0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), sum0);
    sum1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c + 8), _mm256_loadu_ps(b + c + 8), sum1);
  }
  for (; c + 8 <= n; c += 8) sum0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), sum0);
  float result = horizontal_sum(_mm256_add_ps(sum0, sum1));
  for (; c < n; ++c) result += a[c] * b[c];
  return result;
}

MFGF_AVX2 void scale(float* x, int n, float s) {
  const __m256 s_v = _mm256_set1_ps(s);
  int c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(x + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), s_v));
  for (; c < n; ++c) x[c] *= s;
}

MFGF_AVX2 void layer_norm_row(const float* x, const float* residual, const float* gamma, const float* beta, float eps,
                              int width, float* y, float* mean_out, float* rstd_out) {
  // z = x + residual is staged in y, then normalised in place: two passes for the statistics (mean, then the
  // centred sum of squares, which is exact where E[z^2] - E[z]^2 would cancel), one for the output.
  __m256 sum_v = _mm256_setzero_ps();
  int c = 0;
  for (; c + 8 <= width; c += 8) {
    __m256 z = _mm256_loadu_ps(x + c);
    if (residual) z = _mm256_add_ps(z, _mm256_loadu_ps(residual + c));
    _mm256_storeu_ps(y + c, z);
    sum_v = _mm256_add_ps(sum_v, z);
  }
  float sum = horizontal_sum(sum_v);
  for (; c < width; ++c) {
    y[c] = residual ? x[c] + residual[c] : x[c];
    sum += y[c];
  }
  const float mean = sum / width;
  const __m256 mean_v = _mm256_set1_ps(mean);
  __m256 squares_v = _mm256_setzero_ps();
  for (c = 0; c + 8 <= width; c += 8) {
    const __m256 centred = _mm256_sub_ps(_mm256_loadu_ps(y + c), mean_v);
    squares_v = _mm256_fmadd_ps(centred, centred, squares_v);
  }
  float squares = horizontal_sum(squares_v);
  for (; c < width; ++c) squares += (y[c] - mean) * (y[c] - mean);
  const float rstd = 1.0f / std::sqrt(squares / width + eps);
  const __m256 rstd_v = _mm256_set1_ps(rstd);
  for (c = 0; c + 8 <= width; c += 8) {
    const __m256 zhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(y + c), mean_v), rstd_v);
    _mm256_storeu_ps(y + c, _mm256_fmadd_ps(zhat, _mm256_loadu_ps(gamma + c), _mm256_loadu_ps(beta + c)));
  }
  for (; c < width; ++c) y[c] = (y[c] - mean) * rstd * gamma[c] + beta[c];
  *mean_out = mean;
  *rstd_out = rstd;
}

MFGF_AVX2 void layer_norm_row_backward(const float* dy, const float* x, const float* residual, const float* gamma,
                                       float mean, float rstd, float dmean, float drstd, int width, float* dx,
                                       float* dgamma, float* dbeta) {
  const __m256 mean_v = _mm256_set1_ps(mean), rstd_v = _mm256_set1_ps(rstd);
  __m256 sum_g_v = _mm256_setzero_ps(), sum_g_zhat_v = _mm256_setzero_ps();
  int c = 0;
  for (; c + 8 <= width; c += 8) {
    __m256 z = _mm256_loadu_ps(x + c);
    if (residual) z = _mm256_add_ps(z, _mm256_loadu_ps(residual + c));
    const __m256 zhat = _mm256_mul_ps(_mm256_sub_ps(z, mean_v), rstd_v);
    const __m256 d = _mm256_loadu_ps(dy + c);
    const __m256 g = _mm256_mul_ps(d, _mm256_loadu_ps(gamma + c));
    sum_g_v = _mm256_add_ps(sum_g_v, g);
    sum_g_zhat_v = _mm256_fmadd_ps(g, zhat, sum_g_zhat_v);
    _mm256_storeu_ps(dgamma + c, _mm256_fmadd_ps(d, zhat, _mm256_loadu_ps(dgamma + c)));
    _mm256_storeu_ps(dbeta + c, _mm256_add_ps(d, _mm256_loadu_ps(dbeta + c)));
  }
  float sum_g = horizontal_sum(sum_g_v), sum_g_zhat = horizontal_sum(sum_g_zhat_v);
  for (; c < width; ++c) {
    const float zhat = ((residual ? x[c] + residual[c] : x[c]) - mean) * rstd;
    const float g = dy[c] * gamma[c];
    sum_g += g;
    sum_g_zhat += g * zhat;
    dgamma[c] += dy[c] * zhat;
    dbeta[c] += dy[c];
  }
  const float mean_g = sum_g / width, mean_g_zhat = sum_g_zhat / width;
  const float through_mean = dmean / width, through_rstd = -drstd * rstd * rstd / width;
  // dx = rstd (g - mean(g)) + dmean / H  -  zhat (rstd mean(g zhat) - through_rstd)
  const __m256 offset_v = _mm256_set1_ps(through_mean - rstd * mean_g);
  const __m256 zhat_coef_v = _mm256_set1_ps(through_rstd - rstd * mean_g_zhat);
  for (c = 0; c + 8 <= width; c += 8) {
    __m256 z = _mm256_loadu_ps(x + c);
    if (residual) z = _mm256_add_ps(z, _mm256_loadu_ps(residual + c));
    const __m256 zhat = _mm256_mul_ps(_mm256_sub_ps(z, mean_v), rstd_v);
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + c), _mm256_loadu_ps(gamma + c));
    _mm256_storeu_ps(dx + c, _mm256_fmadd_ps(zhat, zhat_coef_v, _mm256_fmadd_ps(rstd_v, g, offset_v)));
  }
  for (; c < width; ++c) {
    const float zhat = ((residual ? x[c] + residual[c] : x[c]) - mean) * rstd;
    dx[c] = rstd * (dy[c] * gamma[c] - mean_g - zhat * mean_g_zhat) + through_mean + through_rstd * zhat;
  }
}

// ---- Exact GELU: y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2 (tile_kernels.h) ----
//
// Phi is computed without ever forming 1 + erf (which cancels for x << 0): with a = |x|,
//   a < 0.75:  Phi(x) = 1/2 + x P(x^2),  P of degree 5 (relative fit error 3.1e-9), the last step one FMA;
//   a >= 0.75: Q(a) = Phi(-a) = exp(-a^2/2) w S(w),  w = 1/(1 + a/2),  S of degree 8 (fit error 2.3e-8),
//              Phi(x) = Q for x < 0 and 1 - Q (Q <= 0.23, so no cancellation) for x > 0.
// exp(-a^2/2) is taken of the rounded s = a*a with the rounding error e = fma(a, a, -s) put back as
// exp(-s/2) (1 - e/2): without it the error of s (up to 2^-24 * 87) would reach 5e-6 relative near the underflow.
// Its exp is exp_accurate_ps (above: one more Taylor term than the attention's, and exact underflow to 0 below
// -87.33).
// Coefficients: least-squares fits of the relative error in float64 on Chebyshev nodes, rounded to float32
// (tools/gelu_coefficients.py reproduces them); the whole float32 evaluation is measured against float64 erfc in
// tests/ops/test_gelu.py (kernels/cpu/README.md, "Exact GELU", gives the figures).
// a is clamped to 14, where exp(-a^2/2) underflows to exactly 0, so +-inf and NaN go through finite arithmetic; Phi
// is then exactly 0 or 1 and y = x Phi gives +inf, NaN, and -0 for -inf (x clamped to -FLT_MAX first). Where GELU(x)
// is subnormal (x < -13.2) the result is -0 (absolute error < 2^-126; MindSpore's runtime flushes subnormals anyway).

// Phi(x) of 8 lanes, with the parts the callers reuse: gauss = exp(-x^2 / 2), and for the lanes with x <= -0.75
// (lower_tail) Q = gauss * mills, mills = w S(w).
struct NormalCdf {
  __m256 cdf, gauss, mills, lower_tail;
};

MFGF_AVX2 inline NormalCdf normal_cdf_ps(__m256 x) {
  NormalCdf out;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  // min returns its second operand when the first is NaN: NaN becomes 14 here (x itself stays NaN).
  const __m256 a = _mm256_min_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(14.0f));
  const __m256 s = _mm256_mul_ps(a, a);
  const __m256 s_error = _mm256_fmsub_ps(a, a, s);
  const __m256 e = exp_accurate_ps(_mm256_mul_ps(s, _mm256_set1_ps(-0.5f)));
  out.gauss = _mm256_fnmadd_ps(_mm256_mul_ps(e, _mm256_set1_ps(0.5f)), s_error, e);

  __m256 p = _mm256_set1_ps(-8.402553248743061e-06f);
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.00011479936802061275f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-0.001187149086035788f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.009973534382879734f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-0.06649038195610046f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.3989422917366028f));
  const __m256 central = _mm256_fmadd_ps(x, p, _mm256_set1_ps(0.5f));

  const __m256 w = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  __m256 t = _mm256_set1_ps(0.07605742663145065f);
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(-0.36740413308143616f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(0.6935059428215027f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(-0.5755046606063843f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(0.10892865061759949f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(0.010838420130312443f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(0.15499773621559143f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(0.19905780255794525f));
  t = _mm256_fmadd_ps(t, w, _mm256_set1_ps(0.19948455691337585f));
  out.mills = _mm256_mul_ps(w, t);
  const __m256 q = _mm256_mul_ps(out.gauss, out.mills);
  const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 tail = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), q), q, negative);
  const __m256 is_central = _mm256_cmp_ps(a, _mm256_set1_ps(0.75f), _CMP_LT_OQ);
  out.cdf = _mm256_blendv_ps(tail, central, is_central);
  out.lower_tail = _mm256_andnot_ps(is_central, negative);
  return out;
}

MFGF_AVX2 inline __m256 gelu_ps(__m256 x) {
  const NormalCdf phi = normal_cdf_ps(x);
  // max returns its second operand when one is NaN, so NaN passes; -inf becomes -FLT_MAX and -FLT_MAX * 0 = -0.
  const __m256 finite_x = _mm256_max_ps(_mm256_set1_ps(-3.402823466e38f), x);
  // In the lower tail (x gauss) mills rather than x Q: Q is subnormal below x = -13.04 while GELU stays normal to
  // -13.2, and a subnormal Q would lose the bits.
  return _mm256_blendv_ps(_mm256_mul_ps(finite_x, phi.cdf),
                          _mm256_mul_ps(_mm256_mul_ps(finite_x, phi.gauss), phi.mills), phi.lower_tail);
}

MFGF_AVX2 inline __m256 gelu_slope_ps(__m256 x) {
  const NormalCdf phi = normal_cdf_ps(x);
  // x clamped to +-FLT_MAX (NaN passes): x phi(x) = 0 at +-inf instead of inf * 0.
  const __m256 finite_x =
      _mm256_min_ps(_mm256_set1_ps(3.402823466e38f), _mm256_max_ps(_mm256_set1_ps(-3.402823466e38f), x));
  const __m256 inv_sqrt_2pi = _mm256_set1_ps(0.39894228040143267794f);
  // Lower tail: gauss (mills + x / sqrt(2 pi)), never forming Q, which is subnormal (flushed to 0 by MindSpore's
  // runtime) below x = -13.04 while the slope is still normal.
  return _mm256_blendv_ps(_mm256_fmadd_ps(finite_x, _mm256_mul_ps(phi.gauss, inv_sqrt_2pi), phi.cdf),
                          _mm256_mul_ps(phi.gauss, _mm256_fmadd_ps(finite_x, inv_sqrt_2pi, phi.mills)),
                          phi.lower_tail);
}

MFGF_AVX2 void gelu(const float* x, float* y, int n) {
  int c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(y + c, gelu_ps(_mm256_loadu_ps(x + c)));
  if (c < n) {
    const __m256i mask = lane_mask(n - c);
    _mm256_maskstore_ps(y + c, mask, gelu_ps(_mm256_maskload_ps(x + c, mask)));
  }
}

MFGF_AVX2 void gelu_backward(const float* dy, const float* x, float* dx, int n) {
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    _mm256_storeu_ps(dx + c, _mm256_mul_ps(_mm256_loadu_ps(dy + c), gelu_slope_ps(_mm256_loadu_ps(x + c))));
  }
  if (c < n) {
    const __m256i mask = lane_mask(n - c);
    const __m256 slope = gelu_slope_ps(_mm256_maskload_ps(x + c, mask));
    _mm256_maskstore_ps(dx + c, mask, _mm256_mul_ps(_mm256_maskload_ps(dy + c, mask), slope));
  }
}

}  // namespace

const TileKernels* avx2_tile_kernels() {
  static const TileKernels table = {
      "avx2", gemm, row_max, exp_shift_sum, dropout_column_codes, dropout_factors, multiply, softmax_grad,
      dot,    scale, layer_norm_row, layer_norm_row_backward, gelu, gelu_backward,
  };
  return &table;
}

}  // namespace mfgf

#else

namespace mfgf {
const TileKernels* avx2_tile_kernels() { return nullptr; }
}  // namespace mfgf

#endif
