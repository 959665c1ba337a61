// Tiling data of GfAddLayerNorm (read by op_kernel/gf_add_layer_norm.cpp through GET_TILING_DATA).
#pragma once

#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(GfAddLayerNormTilingData)
TILING_DATA_FIELD_DEF(uint32_t, rowCount);     // product of all axes but the last
TILING_DATA_FIELD_DEF(uint32_t, hiddenSize);   // the normalised (last) axis
TILING_DATA_FIELD_DEF(uint32_t, rowsPerTile);
TILING_DATA_FIELD_DEF(uint32_t, bufferCount);       // buffers per row queue: 2, or 1 for wide rows
TILING_DATA_FIELD_DEF(uint32_t, tileCount);
TILING_DATA_FIELD_DEF(uint32_t, coreCount);    // vector cores launched
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(GfAddLayerNorm, GfAddLayerNormTilingData)
}  // namespace optiling
