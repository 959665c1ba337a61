// The inner loops of both fused kernels, behind one table per instruction set.
//
// The attention and LayerNorm drivers (flash_attention.cc, add_layer_norm.cc) hold the algorithm and are plain
// C++; every loop whose speed matters goes through a `TileKernels` table. `tile_kernels()` picks the table once,
// at run time: AVX2+FMA when the CPU has it (tile_kernels_avx2.cc, compiled with target attributes so the library
// itself still loads on any x86-64), the portable C++ loops otherwise (tile_kernels_portable.cc).
#pragma once

#include <cstdint>

namespace mfgf {

// Width of one column panel of B in `gemm`: two 8-float AVX registers.
constexpr int kPanelWidth = 16;

enum class Accumulate {
  kOverwrite,  // C = alpha A B
  kAdd,        // C += alpha A B
  kRowScaled,  // C = diag(row_scale) C + alpha A B   (the online-softmax rescale of O, fused into P V)
};

// C (m x n) <- alpha * A (m x k) * B (k x n), with
//   A(i, p) = a[i * a_row_stride + p * a_col_stride]    (so A or A^T of a row-major matrix),
//   B(p, j) = b[(j / kPanelWidth) * b_panel_stride + p * b_row_stride + j % kPanelWidth]
// which covers both a row-major B (b_row_stride = ldb, b_panel_stride = kPanelWidth) and B packed in column panels
// of kPanelWidth (b_row_stride = kPanelWidth, b_panel_stride = kPanelWidth * k).
struct GemmArgs {
  int m, n, k;
  float alpha;
  const float* a;
  int64_t a_row_stride, a_col_stride;
  const float* b;
  int64_t b_row_stride, b_panel_stride;
  float* c;
  int64_t ldc;
  Accumulate mode;
  const float* row_scale;
};

// Attention dropout: keep P(i, j) iff word 0 of Philox4x32-10(counter = (j, i, batch * heads + head, 0),
// key = (key_lo, key_hi)) >= threshold, and scale what is kept by keep_scale = 1 / (1 - p).
struct DropoutSpec {
  bool enabled;
  uint32_t key_lo, key_hi;
  uint32_t threshold;
  float keep_scale;
};

struct TileKernels {
  const char* name;
  void (*gemm)(const GemmArgs& args);
  // max over x[0..n); n >= 1.
  float (*row_max)(const float* x, int n);
  // x = exp(x - shift) in place (exp(-inf) = 0); returns the sum of the new values.
  float (*exp_shift_sum)(float* x, int n, float shift);
  // factor[c] = keep_scale or 0: the dropout mask of row `row`, columns col0 .. col0 + n - 1.
  void (*dropout_factors)(float* factor, int n, const DropoutSpec& spec, uint32_t row, uint32_t batch_head,
                          uint32_t col0);
  // x *= factor elementwise.
  void (*multiply)(float* x, const float* factor, int n);
  // In place dpd -> dS = p * (dpd * factor - d), with factor = 1 when `factor` is null (no dropout).
  void (*softmax_grad)(float* dpd, const float* p, const float* factor, float d, int n);
  float (*dot)(const float* a, const float* b, int n);
  // x *= s.
  void (*scale)(float* x, int n, float s);

  // One row of y = LayerNorm(x + residual) (residual may be null); returns mean and 1/std of x + residual.
  void (*layer_norm_row)(const float* x, const float* residual, const float* gamma, const float* beta, float eps,
                         int width, float* y, float* mean, float* rstd);
  // One row of the LayerNorm backward: dx (= dresidual); dgamma += dy * zhat; dbeta += dy. dmean and drstd are the
  // gradients reaching the saved statistics (0 unless a caller uses them).
  void (*layer_norm_row_backward)(const float* dy, const float* x, const float* residual, const float* gamma,
                                  float mean, float rstd, float dmean, float drstd, int width, float* dx,
                                  float* dgamma, float* dbeta);
};

const TileKernels& portable_tile_kernels();
// Null when this build has no AVX2 code (non-x86 compilers).
const TileKernels* avx2_tile_kernels();

// The table every kernel uses: chosen on first use from the CPU and MINDFORMER_GF_CPU_ISA ("avx2" | "portable");
// MindformerGfSetCpuIsa (isa_dispatch.cc) switches it later, for tests that cover both paths in one process.
const TileKernels& tile_kernels();

// Scalar Philox4x32-10 (Salmon et al., SC'11): the generator behind the attention dropout mask.
inline void philox4x32_10(uint32_t counter[4], uint32_t key_lo, uint32_t key_hi) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u, kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t product0 = static_cast<uint64_t>(kMultiplier0) * counter[0];
    uint64_t product1 = static_cast<uint64_t>(kMultiplier1) * counter[2];
    uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ counter[1] ^ key_lo;
    uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ counter[3] ^ key_hi;
    counter[0] = next0;
    counter[1] = static_cast<uint32_t>(product1);
    counter[2] = next2;
    counter[3] = static_cast<uint32_t>(product0);
    key_lo += kWeyl0;
    key_hi += kWeyl1;
  }
}

inline uint32_t dropout_threshold(float drop_probability) {
  // floor(p * 2^32) in double from the float32 p, the exact rule the Ascend kernel and the numpy reference share.
  double scaled = static_cast<double>(drop_probability) * 4294967296.0;
  return scaled >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(scaled);
}

}  // namespace mfgf
