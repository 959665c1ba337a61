// Tiling data of GfFlashAttention (read by op_kernel/gf_flash_attention.cpp through GET_TILING_DATA).
#pragma once

#include "register/tilingdata_base.h"
#include "tiling/tiling_api.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(GfFlashAttentionTilingData)
TILING_DATA_FIELD_DEF(uint32_t, batch);
TILING_DATA_FIELD_DEF(uint32_t, heads);
TILING_DATA_FIELD_DEF(uint32_t, seqLen);
TILING_DATA_FIELD_DEF(uint32_t, headDim);
TILING_DATA_FIELD_DEF(uint32_t, queryBlock);          // Br
TILING_DATA_FIELD_DEF(uint32_t, keyBlock);            // Bc
TILING_DATA_FIELD_DEF(uint32_t, dropoutRows);  // probability rows per dropout-mask call
TILING_DATA_FIELD_DEF(uint32_t, queryBlocksPerHead);  // ceil(seqLen / Br)
TILING_DATA_FIELD_DEF(uint32_t, taskCount);           // batch * heads * queryBlocksPerHead
TILING_DATA_FIELD_DEF(uint32_t, coreCount);           // vector cores launched: 2 per cube core
TILING_DATA_FIELD_DEF(float, scale);                  // 1 / sqrt(headDim)
TILING_DATA_FIELD_DEF(uint32_t, scoresWorkspaceBytes);
TILING_DATA_FIELD_DEF(uint32_t, probsWorkspaceBytes);
TILING_DATA_FIELD_DEF(uint32_t, workspaceBytesPerCore);
TILING_DATA_FIELD_DEF(uint32_t, scratchBytes);  // UB for SoftmaxFlashV2's temporaries
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, scoresMatmul);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, valuesMatmul);
TILING_DATA_FIELD_DEF_STRUCT(SoftMaxTiling, softmaxTiling);
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(GfFlashAttention, GfFlashAttentionTilingData)
}  // namespace optiling
