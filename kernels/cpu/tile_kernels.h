// The inner loops of both fused kernels, behind one table per instruction set.
//
// The attention and LayerNorm drivers (flash_attention.cc, add_layer_norm.cc) hold the algorithm and are plain
// C++; every loop whose speed matters goes through a `TileKernels` table. `tile_kernels()` picks the table once,
// at run time: AVX2+FMA when the CPU has it (tile_kernels_avx2.cc, compiled with target attributes so the library
// itself still loads on any x86-64), the portable C++ loops otherwise (tile_kernels_portable.cc).
#pragma once

#include <cstdint>

namespace mfgf {

// Width of one column panel of B in `gemm`: two 8-float AVX registers, or one 16-float AVX-512 register.
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

// Attention dropout (mindformer_gf/reference/attention_dropout.py): keep P(i, j) of head `outer` = batch * heads +
// head iff dropout_word(dropout_row_key(head_key, i), dropout_column_code(head_key, j)) >> 8 >= threshold, where
// head_key = dropout_head_key(seed, outer)
// (= floor(p * 2^24)), and scale what is kept by keep_scale = 1 / (1 - p).
struct DropoutSpec {
  bool enabled;
  uint64_t seed;
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
  // codes[c] = mix32(first + c), first = head_key + the block's first column (dropout_column_code): once per key
  // block of a head, shared by all its rows.
  void (*dropout_column_codes)(uint32_t* codes, int n, uint32_t first);
  // factor[c] = keep_scale or 0: the dropout mask of the row whose key is `row_key`, over the columns whose codes
  // are codes[0 .. n).
  void (*dropout_factors)(float* factor, int n, const DropoutSpec& spec, uint32_t row_key, const uint32_t* codes);
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

  // Exact (erf) GELU over n elements: y = x Phi(x), Phi the standard normal CDF (gelu_kernels.h for the method and
  // its error); GELU(-inf) = -0, GELU(+inf) = +inf, NaN stays NaN.
  void (*gelu)(const float* x, float* y, int n);
  // Its backward: dx = dy (Phi(x) + x phi(x)), phi the standard normal density (0 at -inf, 1 at +inf).
  void (*gelu_backward)(const float* dy, const float* x, float* dx, int n);
};

const TileKernels& portable_tile_kernels();
// Null when this build has no AVX2 code (non-x86 compilers).
const TileKernels* avx2_tile_kernels();
// The 16-lane algorithm (tile_kernels_lane16.h) on zmm registers, and the same algorithm on pairs of ymm registers
// (for testing it on CPUs without AVX-512); null on non-x86 compilers.
const TileKernels* avx512_tile_kernels();
const TileKernels* avx512_emulated_tile_kernels();
// The table called `name` ("portable", "avx2", "avx512", "avx512emu") when this build has it and this CPU runs it,
// else null.
const TileKernels* available_tile_kernels(const char* name);

// The table every kernel uses: chosen on first use from the CPU (AVX-512F, else AVX2+FMA, else portable) and
// MINDFORMER_GF_CPU_ISA ("auto" | "avx512" | "avx2" | "avx512emu" | "portable"; an unavailable one means "auto" here,
// and mindformer_gf.ops.cpu turns it into an error before any kernel runs);
// MindformerGfSetCpuIsa (isa_dispatch.cc) switches it later, for tests that cover both paths in one process.
const TileKernels& tile_kernels();

// The multiply-xorshift finaliser (Thomas Mueller's, as listed by hash-prospector), modulo 2^32: the one mixing
// function of every dropout mask.
constexpr uint32_t kMixMultiplier = 0x45D9F3Bu;
inline uint32_t mix32(uint32_t x) {
  x = ((x >> 16) ^ x) * kMixMultiplier;
  x = ((x >> 16) ^ x) * kMixMultiplier;
  return (x >> 16) ^ x;
}

// The scalar parts of the dropout word: once per (seed, head) and once per row.
inline uint32_t dropout_head_key(uint64_t seed, uint32_t outer) {
  return mix32(static_cast<uint32_t>(seed) ^ mix32(static_cast<uint32_t>(seed >> 32) ^ mix32(outer)));
}
inline uint32_t dropout_row_key(uint32_t head_key, uint32_t row) { return mix32(head_key ^ mix32(row)); }
// Head-dependent, so rows of two heads that happen to share a 32-bit row key still draw different masks.
inline uint32_t dropout_column_code(uint32_t head_key, uint32_t column) { return mix32(head_key + column); }
// The per-entry part: one add and one mix32. An entry is kept iff (word >> kDropoutWordShift) >= threshold.
inline uint32_t dropout_word(uint32_t row_key, uint32_t column_code) { return mix32(row_key + column_code); }
constexpr int kDropoutWordShift = 8;

inline uint32_t dropout_threshold(float drop_probability) {
  // floor(p * 2^24) in double from the float32 p, the exact rule the Ascend kernel and the numpy reference share.
  const double scaled = static_cast<double>(drop_probability) * 16777216.0;
  return scaled >= 16777216.0 ? 16777216u : static_cast<uint32_t>(scaled);
}

}  // namespace mfgf
