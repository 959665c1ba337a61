// Portable C++ versions of the tile kernels: the reference behaviour of every table, and the path taken on CPUs
// without AVX2/FMA. Kept simple; the compiler vectorises what it can with the baseline instruction set.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tile_kernels.h"

namespace mfgf {
namespace {

void gemm(const GemmArgs& g) {
  float row[kPanelWidth];
  for (int i = 0; i < g.m; ++i) {
    float* c_row = g.c + i * g.ldc;
    for (int j0 = 0; j0 < g.n; j0 += kPanelWidth) {
      const int width = std::min(kPanelWidth, g.n - j0);
      const float* panel = g.b + (j0 / kPanelWidth) * g.b_panel_stride;
      std::fill(row, row + kPanelWidth, 0.0f);
      for (int p = 0; p < g.k; ++p) {
        const float a = g.a[i * g.a_row_stride + p * g.a_col_stride];
        const float* b_row = panel + p * g.b_row_stride;
        for (int j = 0; j < width; ++j) row[j] += a * b_row[j];
      }
      for (int j = 0; j < width; ++j) {
        const float product = g.alpha * row[j];
        switch (g.mode) {
          case Accumulate::kOverwrite:
            c_row[j0 + j] = product;
            break;
          case Accumulate::kAdd:
            c_row[j0 + j] += product;
            break;
          case Accumulate::kRowScaled:
            c_row[j0 + j] = g.row_scale[i] * c_row[j0 + j] + product;
            break;
        }
      }
    }
  }
}

float row_max(const float* x, int n) {
  float best = x[0];
  for (int c = 1; c < n; ++c) best = std::max(best, x[c]);
  return best;
}

float exp_shift_sum(float* x, int n, float shift) {
  float sum = 0.0f;
  for (int c = 0; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

void dropout_column_codes(uint32_t* codes, int n, uint32_t first) {
  for (int c = 0; c < n; ++c) codes[c] = mix32(first + static_cast<uint32_t>(c));
}

void dropout_factors(float* factor, int n, const DropoutSpec& spec, uint32_t row_key, const uint32_t* codes) {
  for (int c = 0; c < n; ++c) {
    const bool keep = (dropout_word(row_key, codes[c]) >> kDropoutWordShift) >= spec.threshold;
    factor[c] = keep ? spec.keep_scale : 0.0f;
  }
}

void multiply(float* x, const float* factor, int n) {
  for (int c = 0; c < n; ++c) x[c] *= factor[c];
}

void softmax_grad(float* dpd, const float* p, const float* factor, float d, int n) {
  for (int c = 0; c < n; ++c) dpd[c] = p[c] * ((factor ? dpd[c] * factor[c] : dpd[c]) - d);
}

float dot(const float* a, const float* b, int n) {
  float sum = 0.0f;
  for (int c = 0; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

void scale(float* x, int n, float s) {
  for (int c = 0; c < n; ++c) x[c] *= s;
}

void layer_norm_row(const float* x, const float* residual, const float* gamma, const float* beta, float eps, int width,
                    float* y, float* mean_out, float* rstd_out) {
  float sum = 0.0f;
  for (int c = 0; c < width; ++c) {
    y[c] = residual ? x[c] + residual[c] : x[c];
    sum += y[c];
  }
  const float mean = sum / width;
  float squares = 0.0f;
  for (int c = 0; c < width; ++c) squares += (y[c] - mean) * (y[c] - mean);
  const float rstd = 1.0f / std::sqrt(squares / width + eps);
  for (int c = 0; c < width; ++c) y[c] = (y[c] - mean) * rstd * gamma[c] + beta[c];
  *mean_out = mean;
  *rstd_out = rstd;
}

void layer_norm_row_backward(const float* dy, const float* x, const float* residual, const float* gamma, float mean,
                             float rstd, float dmean, float drstd, int width, float* dx, float* dgamma, float* dbeta) {
  float sum_g = 0.0f, sum_g_zhat = 0.0f;
  for (int c = 0; c < width; ++c) {
    const float zhat = ((residual ? x[c] + residual[c] : x[c]) - mean) * rstd;
    const float g = dy[c] * gamma[c];
    sum_g += g;
    sum_g_zhat += g * zhat;
    dgamma[c] += dy[c] * zhat;
    dbeta[c] += dy[c];
  }
  const float mean_g = sum_g / width, mean_g_zhat = sum_g_zhat / width;
  const float through_mean = dmean / width, through_rstd = -drstd * rstd * rstd / width;
  for (int c = 0; c < width; ++c) {
    const float zhat = ((residual ? x[c] + residual[c] : x[c]) - mean) * rstd;
    dx[c] = rstd * (dy[c] * gamma[c] - mean_g - zhat * mean_g_zhat) + through_mean + through_rstd * zhat;
  }
}

// In double with the C library's erfc, then rounded once: the accuracy reference the SIMD tables are tested against
// as well as float64 numpy (Phi(x) = erfc(-x / sqrt 2) / 2 has no cancellation in either tail).
double normal_cdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }

void gelu(const float* x, float* y, int n) {
  for (int c = 0; c < n; ++c) {
    const double v = x[c];
    // The limit at -inf is -0 (x Phi(x) -> 0), which -inf * 0 would turn into NaN.
    y[c] = v == -INFINITY ? -0.0f : static_cast<float>(v * normal_cdf(v));
  }
}

void gelu_backward(const float* dy, const float* x, float* dx, int n) {
  for (int c = 0; c < n; ++c) {
    const double v = x[c];
    double slope;
    if (std::isinf(v)) {
      slope = v > 0 ? 1.0 : 0.0;
    } else {
      slope = normal_cdf(v) + v * 0.39894228040143267794 * std::exp(-0.5 * v * v);
    }
    dx[c] = static_cast<float>(dy[c] * slope);
  }
}

}  // namespace

const TileKernels& portable_tile_kernels() {
  static const TileKernels table = {
      "portable",    gemm,  row_max, exp_shift_sum,  dropout_column_codes, dropout_factors,         multiply, softmax_grad,
      dot,           scale, layer_norm_row, layer_norm_row_backward, gelu, gelu_backward,
  };
  return table;
}

}  // namespace mfgf
