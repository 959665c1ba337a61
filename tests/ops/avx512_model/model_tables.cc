// The table registry of the modelled build: kernels/cpu/tile_kernels_avx512.cc (compiled against the scalar
// intrinsics model in this directory) and kernels/cpu/tile_kernels_probe.cc link against this file instead of
// isa_dispatch.cc, so the probe API answers "avx512" with the modelled zmm table whatever the host CPU, and no other
// table is in this library (the tests compare it with the real library's tables).
#include <cstring>

#include "aot_abi.h"
#include "tile_kernels.h"

namespace mfgf {

const TileKernels* avx2_tile_kernels() { return nullptr; }
const TileKernels* avx512_emulated_tile_kernels() { return nullptr; }
const TileKernels* available_tile_kernels(const char* name) {
  return std::strcmp(name, "avx512") == 0 ? avx512_tile_kernels() : nullptr;
}

}  // namespace mfgf

extern "C" {

// The name the modelled table carries (Lane16Kernels<Avx512Lanes>::table's argument): "avx512".
MFGF_EXPORT const char* MindformerGfAvx512ModelTableName() { return mfgf::avx512_tile_kernels()->name; }

}  // extern "C"
