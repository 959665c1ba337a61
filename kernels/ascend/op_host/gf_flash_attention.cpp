// GfFlashAttention: operator definition, shape inference and tiling (host side of
// op_kernel/gf_flash_attention.cpp).
//
// Inputs  query, key, value  [batch, heads, length, head_dim] fp16 | bf16 (BNSD)
//         key_mask           [batch, length] int32, nonzero = valid key
//         seed               [1] int64, dropout seed (both 32-bit halves key the mask hash)
//         drop_probability   [1] fp32, 0 = no dropout (inference)
// Outputs out                like query
//         lse                [batch, heads, length] fp32, row log-sum-exp for the backward
// The same inputs, in the same order and with the same names, as the CPU kernel FlashAttentionForward
// (kernels/cpu/flash_attention.cc), so one Python wrapper shape serves both.
#include <cmath>

#include "gf_flash_attention_tiling.h"
#include "gf_host_common.h"
#include "gf_tiling_plan.h"

namespace optiling {
namespace {

constexpr const char* kOp = "GfFlashAttention";

ge::graphStatus TilingFunc(gert::TilingContext* context)
{
    const gert::Shape& query = context->GetInputShape(0)->GetStorageShape();
    const gert::Shape& mask = context->GetInputShape(3)->GetStorageShape();
    if (query.GetDimNum() != 4) {
        return gf_host::Refuse(kOp, "query, key and value must be [batch, heads, length, head_dim]");
    }
    for (size_t input = 1; input <= 2; ++input) {
        if (context->GetInputShape(input)->GetStorageShape() != query) {
            return gf_host::Refuse(kOp, "key and value must have the query's shape");
        }
    }
    const uint32_t batch = static_cast<uint32_t>(query.GetDim(0));
    const uint32_t heads = static_cast<uint32_t>(query.GetDim(1));
    const uint32_t length = static_cast<uint32_t>(query.GetDim(2));
    const uint32_t headDim = static_cast<uint32_t>(query.GetDim(3));
    if (mask.GetDimNum() != 2 || mask.GetDim(0) != batch || mask.GetDim(1) != length) {
        return gf_host::Refuse(kOp, "key_mask must be [batch, length]");
    }
    if (!gf_plan::AttentionHeadDimSupported(headDim)) {
        return gf_host::Refuse(kOp, "head_dim must be a multiple of 16 (at most 2040)");
    }
    const ge::DataType dtype = context->GetInputDesc(0)->GetDataType();
    matmul_tiling::DataType cubeType;
    if (!gf_host::CubeDataType(dtype, &cubeType)) {
        return gf_host::Refuse(kOp, "query, key and value must be float16 or bfloat16");
    }
    const uint32_t element = 2;

    auto minScratch = [](uint32_t br, uint32_t bc) {
        return AscendC::GetSoftMaxFlashV2MinTmpSize(ge::Shape({br, bc}), sizeof(float), sizeof(float), true, false);
    };
    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    const gf_plan::AttentionLaunch launch = gf_plan::PlanAttentionLaunch(
        batch, heads, length, headDim, element, false, static_cast<uint32_t>(platform.GetCoreNumAic()), minScratch);
    const gf_plan::AttentionPlan& plan = launch.plan;
    if (!plan.fits) {
        return gf_host::Refuse(kOp, "head_dim too large for the Unified Buffer even with 16-row query blocks");
    }
    const uint32_t br = plan.queryBlock;
    const uint32_t bc = plan.keyBlock;

    GfFlashAttentionTilingData tiling;
    tiling.set_batch(batch);
    tiling.set_heads(heads);
    tiling.set_seqLen(length);
    tiling.set_headDim(headDim);
    tiling.set_queryBlock(br);
    tiling.set_keyBlock(bc);
    tiling.set_dropoutRows(plan.dropoutRows);
    tiling.set_queryBlocksPerHead(launch.queryBlocksPerHead);
    tiling.set_taskCount(launch.taskCount);
    tiling.set_scale(1.0f / std::sqrt(static_cast<float>(headDim)));
    tiling.set_coreCount(launch.vectorCores);
    tiling.set_scoresWorkspaceBytes(launch.scoresWorkspaceBytes);
    tiling.set_probsWorkspaceBytes(launch.probsWorkspaceBytes);
    tiling.set_workspaceBytesPerCore(plan.workspaceBytesPerCore);
    tiling.set_scratchBytes(plan.scratchBytes);

    AscendC::SoftMaxFlashV2TilingFunc(ge::Shape({br, bc}), sizeof(float), sizeof(float), plan.scratchBytes,
                                      tiling.softmaxTiling, true, false);
    // S_ij = Q_i K_j^T (K read transposed): Br x Bc x d.  P_ij V_j: Br x d x Bc.
    if (!gf_host::CubeTiling(platform, cubeType, br, bc, headDim, false, true, tiling.scoresMatmul) ||
        !gf_host::CubeTiling(platform, cubeType, br, headDim, bc, false, false, tiling.valuesMatmul)) {
        return gf_host::Refuse(kOp, "the Matmul API found no tiling for the attention tiles");
    }

    context->SetBlockDim(launch.blockDim);
    gf_host::Store(context, tiling);
    gf_host::SetWorkspace(context, platform, launch.workspaceBytes);
    return ge::GRAPH_SUCCESS;
}

}  // namespace
}  // namespace optiling

namespace ge {
namespace {

ge::graphStatus InferShape(gert::InferShapeContext* context)
{
    const gert::Shape* query = context->GetInputShape(0);
    gert::Shape* out = context->GetOutputShape(0);
    gert::Shape* lse = context->GetOutputShape(1);
    *out = *query;
    lse->SetDimNum(3);
    for (size_t axis = 0; axis < 3; ++axis) {
        lse->SetDim(axis, query->GetDim(axis));
    }
    return GRAPH_SUCCESS;
}

ge::graphStatus InferDataType(gert::InferDataTypeContext* context)
{
    context->SetOutputDataType(0, context->GetInputDataType(0));
    context->SetOutputDataType(1, ge::DT_FLOAT);
    return GRAPH_SUCCESS;
}

}  // namespace
}  // namespace ge

namespace ops {
class GfFlashAttention : public OpDef {
public:
    explicit GfFlashAttention(const char* name) : OpDef(name)
    {
        // One column per supported combination: (fp16 ...) and (bf16 ...).
        const std::vector<ge::DataType> inputType = {ge::DT_FLOAT16, ge::DT_BF16};
        const std::vector<ge::Format> nd = {ge::FORMAT_ND, ge::FORMAT_ND};
        this->Input("query").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("key").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("value").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("key_mask").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32}).Format(nd);
        this->Input("seed").ParamType(REQUIRED).DataType({ge::DT_INT64, ge::DT_INT64}).Format(nd);
        this->Input("drop_probability").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
        this->Output("out").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Output("lse").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);

        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc).AddConfig("ascend910b");
    }
};

OP_ADD(GfFlashAttention);
}  // namespace ops
