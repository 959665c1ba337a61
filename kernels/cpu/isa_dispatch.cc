// Run-time choice of the tile-kernel table, and the library's small C API for Python (loaded with ctypes by
// mindformer_gf.ops.cpu and the tests): which instruction set runs, how many threads, and the dropout hash's
// words, column codes and keep factors, so the tests can check them against the numpy reference word for word.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// libgcc's and compiler-rt's checks also require the OS to save the zmm and mask registers (XGETBV).
bool cpu_has_avx512f() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

const TileKernels* best_available() {
  if (const TileKernels* avx512 = available_tile_kernels("avx512")) return avx512;
  if (const TileKernels* avx2 = available_tile_kernels("avx2")) return avx2;
  return &portable_tile_kernels();
}

const TileKernels* initial_choice() {
  const char* requested = std::getenv("MINDFORMER_GF_CPU_ISA");
  const TileKernels* table = requested ? available_tile_kernels(requested) : nullptr;
  return table ? table : best_available();
}

std::atomic<const TileKernels*>& chosen() {
  static std::atomic<const TileKernels*> table{initial_choice()};
  return table;
}

}  // namespace

const TileKernels& tile_kernels() { return *chosen().load(std::memory_order_acquire); }

const TileKernels* available_tile_kernels(const char* name) {
  if (std::strcmp(name, "portable") == 0) return &portable_tile_kernels();
  if (std::strcmp(name, "avx2") == 0) return cpu_has_avx2_fma() ? avx2_tile_kernels() : nullptr;
  if (std::strcmp(name, "avx512") == 0) return cpu_has_avx512f() ? avx512_tile_kernels() : nullptr;
  if (std::strcmp(name, "avx512emu") == 0) return cpu_has_avx2_fma() ? avx512_emulated_tile_kernels() : nullptr;
  return nullptr;
}

}  // namespace mfgf

extern "C" {

// Name of the tile kernels in use: "avx512", "avx2", "avx512emu" or "portable".
MFGF_EXPORT const char* MindformerGfCpuIsa() { return mfgf::tile_kernels().name; }

// Selects a table by name (MindformerGfCpuIsaAvailable's names, or "auto": the best this CPU runs); returns 0, or 1
// when it is unknown or unavailable here (the choice is then unchanged).
MFGF_EXPORT int MindformerGfSetCpuIsa(const char* name) {
  const mfgf::TileKernels* table =
      std::strcmp(name, "auto") == 0 ? mfgf::best_available() : mfgf::available_tile_kernels(name);
  if (!table) return 1;
  mfgf::chosen().store(table, std::memory_order_release);
  return 0;
}

// 1 when the table `name` ("portable", "avx2", "avx512", "avx512emu") is compiled in and this CPU runs it.
MFGF_EXPORT int MindformerGfCpuIsaAvailable(const char* name) {
  return mfgf::available_tile_kernels(name) != nullptr ? 1 : 0;
}

MFGF_EXPORT int MindformerGfNumThreads() { return mfgf::num_threads(); }

// The dropout words of head `outer`, row `row`, columns col0 .. col0 + n - 1, from the scalar functions.
MFGF_EXPORT void MindformerGfDropoutWords(uint32_t* words, int n, uint64_t seed, uint32_t outer, uint32_t row,
                                          uint32_t col0) {
  const uint32_t head_key = mfgf::dropout_head_key(seed, outer);
  const uint32_t row_key = mfgf::dropout_row_key(head_key, row);
  for (int c = 0; c < n; ++c) {
    words[c] = mfgf::dropout_word(row_key, mfgf::dropout_column_code(head_key, col0 + static_cast<uint32_t>(c)));
  }
}

// The column codes of columns col0 .. col0 + n - 1 of the head whose key is head_key, through the tile kernels in
// use, so tests see the vector mix32.
MFGF_EXPORT void MindformerGfDropoutColumnCodes(uint32_t* codes, int n, uint32_t head_key, uint32_t col0) {
  mfgf::tile_kernels().dropout_column_codes(codes, n, head_key + col0);
}

// The dropout keep factors (1/(1-p) or 0) of one row through the tile kernels in use, so tests see the vector path.
MFGF_EXPORT void MindformerGfDropoutFactors(float* factor, int n, uint64_t seed, float drop_probability, uint32_t row,
                                            uint32_t outer, uint32_t col0) {
  const mfgf::DropoutSpec spec{true, seed, mfgf::dropout_threshold(drop_probability),
                               1.0f / (1.0f - drop_probability)};
  std::vector<uint32_t> codes(static_cast<size_t>(n));
  const uint32_t head_key = mfgf::dropout_head_key(seed, outer);
  mfgf::tile_kernels().dropout_column_codes(codes.data(), n, head_key + col0);
  const uint32_t row_key = mfgf::dropout_row_key(head_key, row);
  mfgf::tile_kernels().dropout_factors(factor, n, spec, row_key, codes.data());
}

}  // extern "C"
