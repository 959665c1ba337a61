// Run-time choice of the tile-kernel table, and the library's small C API for Python (loaded with ctypes by
// mindformer_gf.ops.fused and the tests): which instruction set runs, how many threads, and the raw Philox
// generator so the tests can check the dropout stream against the numpy reference word for word.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

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

const TileKernels* best_available() {
  const TileKernels* avx2 = avx2_tile_kernels();
  return avx2 && cpu_has_avx2_fma() ? avx2 : &portable_tile_kernels();
}

const TileKernels* initial_choice() {
  const char* requested = std::getenv("MINDFORMER_GF_CPU_ISA");
  if (requested && std::strcmp(requested, "portable") == 0) return &portable_tile_kernels();
  return best_available();
}

std::atomic<const TileKernels*>& chosen() {
  static std::atomic<const TileKernels*> table{initial_choice()};
  return table;
}

}  // namespace

const TileKernels& tile_kernels() { return *chosen().load(std::memory_order_acquire); }

}  // namespace mfgf

extern "C" {

// Name of the tile kernels in use: "avx2" or "portable".
MFGF_EXPORT const char* MindformerGfCpuIsa() { return mfgf::tile_kernels().name; }

// Selects "portable" or "avx2" (or "auto": the best this CPU runs); returns 0, or 1 when unavailable here.
MFGF_EXPORT int MindformerGfSetCpuIsa(const char* name) {
  const mfgf::TileKernels* table = nullptr;
  if (std::strcmp(name, "portable") == 0) {
    table = &mfgf::portable_tile_kernels();
  } else if (std::strcmp(name, "auto") == 0) {
    table = mfgf::best_available();
  } else if (std::strcmp(name, "avx2") == 0 && mfgf::best_available() != &mfgf::portable_tile_kernels()) {
    table = mfgf::best_available();
  }
  if (!table) return 1;
  mfgf::chosen().store(table, std::memory_order_release);
  return 0;
}

MFGF_EXPORT int MindformerGfNumThreads() { return mfgf::num_threads(); }

// The four output words of Philox4x32-10 for `count` counters (4 words each) under one key, in place.
MFGF_EXPORT void MindformerGfPhilox4x32(uint32_t* counters, int64_t count, uint32_t key_lo, uint32_t key_hi) {
  for (int64_t index = 0; index < count; ++index) mfgf::philox4x32_10(counters + 4 * index, key_lo, key_hi);
}

// The dropout keep factors (1/(1-p) or 0) of one row through the tile kernels in use, so tests see the vector path.
MFGF_EXPORT void MindformerGfDropoutFactors(float* factor, int n, uint64_t seed, float drop_probability, uint32_t row,
                                uint32_t batch_head, uint32_t col0) {
  mfgf::DropoutSpec spec{true, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                         mfgf::dropout_threshold(drop_probability), 1.0f / (1.0f - drop_probability)};
  mfgf::tile_kernels().dropout_factors(factor, n, spec, row, batch_head, col0);
}

}  // extern "C"
