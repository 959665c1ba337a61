// Tiling data of GfAddLayerNormGrad (read by op_kernel/gf_add_layer_norm_grad.cpp through GET_TILING_DATA).
#pragma once

#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(GfAddLayerNormGradTilingData)
TILING_DATA_FIELD_DEF(uint32_t, rowCount);
TILING_DATA_FIELD_DEF(uint32_t, hiddenSize);
TILING_DATA_FIELD_DEF(uint32_t, rowsPerTile);        // row phase (dx)
TILING_DATA_FIELD_DEF(uint32_t, bufferCount);       // buffers per row queue: 2, or 1 for wide rows
TILING_DATA_FIELD_DEF(uint32_t, tileCount);
TILING_DATA_FIELD_DEF(uint32_t, columnSlice);        // column phase (dgamma, dbeta): features per task
TILING_DATA_FIELD_DEF(uint32_t, sliceCount);
TILING_DATA_FIELD_DEF(uint32_t, rowsPerColumnTile);  // power of two
TILING_DATA_FIELD_DEF(uint32_t, coreCount);          // vector cores launched
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(GfAddLayerNormGrad, GfAddLayerNormGradTilingData)
}  // namespace optiling
