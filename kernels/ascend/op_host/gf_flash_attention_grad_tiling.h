// Tiling data of GfFlashAttentionGrad (read by op_kernel/gf_flash_attention_grad.cpp through GET_TILING_DATA).
#pragma once

#include "register/tilingdata_base.h"
#include "tiling/tiling_api.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(GfFlashAttentionGradTilingData)
TILING_DATA_FIELD_DEF(uint32_t, batch);
TILING_DATA_FIELD_DEF(uint32_t, heads);
TILING_DATA_FIELD_DEF(uint32_t, seqLen);
TILING_DATA_FIELD_DEF(uint32_t, headDim);
TILING_DATA_FIELD_DEF(uint32_t, queryBlock);          // Br
TILING_DATA_FIELD_DEF(uint32_t, keyBlock);            // Bc
TILING_DATA_FIELD_DEF(uint32_t, dropoutRows);  // probability rows per dropout-mask call
TILING_DATA_FIELD_DEF(uint32_t, queryBlocksPerHead);  // ceil(seqLen / Br)
TILING_DATA_FIELD_DEF(uint32_t, keyBlocksPerHead);    // ceil(seqLen / Bc)
TILING_DATA_FIELD_DEF(uint32_t, keyTaskCount);        // batch * heads * keyBlocksPerHead: dK_j, dV_j owners
TILING_DATA_FIELD_DEF(uint32_t, queryTaskCount);      // batch * heads * queryBlocksPerHead: dQ_i owners
TILING_DATA_FIELD_DEF(uint32_t, keyTaskCost);         // tile products of one key task (balances the split)
TILING_DATA_FIELD_DEF(uint32_t, queryTaskCost);       // tile products of one query task
TILING_DATA_FIELD_DEF(uint32_t, coreCount);           // vector cores launched: 2 per cube core
TILING_DATA_FIELD_DEF(float, scale);                  // 1 / sqrt(headDim)
TILING_DATA_FIELD_DEF(uint32_t, scoresWorkspaceBytes);
TILING_DATA_FIELD_DEF(uint32_t, probsWorkspaceBytes);
TILING_DATA_FIELD_DEF(uint32_t, keyAccumulatorBytes);
TILING_DATA_FIELD_DEF(uint32_t, workspaceBytesPerCore);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, scoresMatmul);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, keyGradMatmul);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, queryGradMatmul);
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(GfFlashAttentionGrad, GfFlashAttentionGradTilingData)
}  // namespace optiling
