// Direct calls into one named tile-kernel table, for tests that compare the tables with each other (bit for bit, or
// within the reduction-order bound of tile_kernels_lane16.h) without going through MindSpore or switching the
// process-wide choice. Every function returns 0, or 1 when the named table is not available on this CPU/build.
#include <cstdint>
#include <cstring>

#include "aot_abi.h"
#include "tile_kernels.h"

extern "C" {

// 1 when this build contains the table `name` (whether or not this CPU can run it): on x86-64 every table is
// compiled, so a host without AVX-512 can still check that the AVX-512 code is in the library it ships.
MFGF_EXPORT int MindformerGfTileTableCompiled(const char* name) {
  if (std::strcmp(name, "portable") == 0) return 1;
  if (std::strcmp(name, "avx2") == 0) return mfgf::avx2_tile_kernels() != nullptr;
  if (std::strcmp(name, "avx512") == 0) return mfgf::avx512_tile_kernels() != nullptr;
  if (std::strcmp(name, "avx512emu") == 0) return mfgf::avx512_emulated_tile_kernels() != nullptr;
  return 0;
}

// C (m x n) <- alpha A B in the named table, with GemmArgs' addressing (tile_kernels.h); mode 0 overwrite, 1 add,
// 2 row-scaled (row_scale has m entries).
MFGF_EXPORT int MindformerGfTileGemm(const char* isa, int m, int n, int k, float alpha, const float* a,
                                     int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t b_row_stride,
                                     int64_t b_panel_stride, float* c, int64_t ldc, int mode, const float* row_scale) {
  const mfgf::TileKernels* table = mfgf::available_tile_kernels(isa);
  if (!table || mode < 0 || mode > 2) return 1;
  table->gemm({m, n, k, alpha, a, a_row_stride, a_col_stride, b, b_row_stride, b_panel_stride, c, ldc,
               static_cast<mfgf::Accumulate>(mode), row_scale});
  return 0;
}

// out[0] = row_max(x), out[1] = dot(x, y), out[2] = exp_shift_sum(x_exp, shift) (x_exp is exponentiated in place).
MFGF_EXPORT int MindformerGfTileRowKernels(const char* isa, const float* x, const float* y, float* x_exp, int n,
                                           float shift, float* out) {
  const mfgf::TileKernels* table = mfgf::available_tile_kernels(isa);
  if (!table) return 1;
  out[0] = table->row_max(x, n);
  out[1] = table->dot(x, y, n);
  out[2] = table->exp_shift_sum(x_exp, n, shift);
  return 0;
}

// In place: multiplied *= factor, scaled *= s, dpd = softmax_grad(dpd, p, factor or null, d).
MFGF_EXPORT int MindformerGfTileElementwise(const char* isa, float* multiplied, float* scaled, float* dpd,
                                            const float* p, const float* factor, int use_factor, float s, float d,
                                            int n) {
  const mfgf::TileKernels* table = mfgf::available_tile_kernels(isa);
  if (!table) return 1;
  table->multiply(multiplied, factor, n);
  table->scale(scaled, n, s);
  table->softmax_grad(dpd, p, use_factor ? factor : nullptr, d, n);
  return 0;
}

// The column codes and keep factors of one row of head `outer` (as MindformerGfDropoutFactors) in the named table.
MFGF_EXPORT int MindformerGfTileDropout(const char* isa, uint32_t* codes, float* factor, int n, uint64_t seed,
                                        float drop_probability, uint32_t row, uint32_t outer, uint32_t col0) {
  const mfgf::TileKernels* table = mfgf::available_tile_kernels(isa);
  if (!table) return 1;
  const mfgf::DropoutSpec spec{true, seed, mfgf::dropout_threshold(drop_probability),
                               1.0f / (1.0f - drop_probability)};
  const uint32_t head_key = mfgf::dropout_head_key(seed, outer);
  table->dropout_column_codes(codes, n, head_key + col0);
  table->dropout_factors(factor, n, spec, mfgf::dropout_row_key(head_key, row), codes);
  return 0;
}

// `rows` rows of width `width` through layer_norm_row (residual may be null).
MFGF_EXPORT int MindformerGfTileLayerNorm(const char* isa, const float* x, const float* residual, const float* gamma,
                                          const float* beta, float eps, int rows, int width, float* y, float* mean,
                                          float* rstd) {
  const mfgf::TileKernels* table = mfgf::available_tile_kernels(isa);
  if (!table) return 1;
  for (int r = 0; r < rows; ++r) {
    const int64_t offset = int64_t{r} * width;
    table->layer_norm_row(x + offset, residual ? residual + offset : nullptr, gamma, beta, eps, width, y + offset,
                          mean + r, rstd + r);
  }
  return 0;
}

// `rows` rows through layer_norm_row_backward; dgamma and dbeta accumulate over the rows in order.
MFGF_EXPORT int MindformerGfTileLayerNormBackward(const char* isa, const float* dy, const float* x,
                                                  const float* residual, const float* gamma, const float* mean,
                                                  const float* rstd, const float* dmean, const float* drstd, int rows,
                                                  int width, float* dx, float* dgamma, float* dbeta) {
  const mfgf::TileKernels* table = mfgf::available_tile_kernels(isa);
  if (!table) return 1;
  for (int r = 0; r < rows; ++r) {
    const int64_t offset = int64_t{r} * width;
    table->layer_norm_row_backward(dy + offset, x + offset, residual ? residual + offset : nullptr, gamma, mean[r],
                                   rstd[r], dmean[r], drstd[r], width, dx + offset, dgamma, dbeta);
  }
  return 0;
}

}  // extern "C"
