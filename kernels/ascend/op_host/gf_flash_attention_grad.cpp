// GfFlashAttentionGrad: operator definition, shape inference and tiling (host side of
// op_kernel/gf_flash_attention_grad.cpp).
//
// Inputs  query, key, value, key_mask, seed, drop_probability   as GfFlashAttention
//         out, lse                                            GfFlashAttention's outputs
//         d_out [batch, heads, length, head_dim], d_lse [batch, heads, length] fp32   upstream gradients
// Outputs d_query, d_key, d_value                             like query
// The inputs of the CPU kernel FlashAttentionBackward (kernels/cpu/flash_attention.cc), same order and names.
#include <cmath>
#include <initializer_list>

#include "gf_flash_attention_grad_tiling.h"
#include "gf_host_common.h"
#include "gf_tiling_plan.h"

namespace optiling {
namespace {

constexpr const char* kOp = "GfFlashAttentionGrad";

ge::graphStatus TilingFunc(gert::TilingContext* context)
{
    const gert::Shape& query = context->GetInputShape(0)->GetStorageShape();
    const gert::Shape& mask = context->GetInputShape(3)->GetStorageShape();
    if (query.GetDimNum() != 4) {
        return gf_host::Refuse(kOp, "query, key and value must be [batch, heads, length, head_dim]");
    }
    for (size_t input : {size_t{1}, size_t{2}, size_t{6}, size_t{8}}) {
        if (context->GetInputShape(input)->GetStorageShape() != query) {
            return gf_host::Refuse(kOp, "key, value, out and d_out must have the query's shape");
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
    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    const gf_plan::AttentionLaunch launch =
        gf_plan::PlanAttentionLaunch(batch, heads, length, headDim, element, true,
                                     static_cast<uint32_t>(platform.GetCoreNumAic()), [](uint32_t, uint32_t) { return 0u; });
    const gf_plan::AttentionPlan& plan = launch.plan;
    if (!plan.fits) {
        return gf_host::Refuse(kOp, "head_dim too large for the Unified Buffer even with 16-row query blocks");
    }
    const uint32_t br = plan.queryBlock;
    const uint32_t bc = plan.keyBlock;

    GfFlashAttentionGradTilingData tiling;
    tiling.set_batch(batch);
    tiling.set_heads(heads);
    tiling.set_seqLen(length);
    tiling.set_headDim(headDim);
    tiling.set_queryBlock(br);
    tiling.set_keyBlock(bc);
    tiling.set_dropoutRows(plan.dropoutRows);
    tiling.set_queryBlocksPerHead(launch.queryBlocksPerHead);
    tiling.set_keyBlocksPerHead(launch.keyBlocksPerHead);
    tiling.set_keyTaskCount(launch.keyTaskCount);
    tiling.set_queryTaskCount(launch.queryTaskCount);
    // Cost-weighted split (gf::CostSplitBegin) keeps the cores' work even: see gf_plan::PlanAttentionLaunch.
    tiling.set_keyTaskCost(launch.keyTaskCost);
    tiling.set_queryTaskCost(launch.queryTaskCost);
    tiling.set_scale(1.0f / std::sqrt(static_cast<float>(headDim)));
    tiling.set_coreCount(launch.vectorCores);
    tiling.set_scoresWorkspaceBytes(launch.scoresWorkspaceBytes);
    tiling.set_probsWorkspaceBytes(launch.probsWorkspaceBytes);
    tiling.set_keyAccumulatorBytes(launch.keyAccumulatorBytes);
    tiling.set_workspaceBytesPerCore(plan.workspaceBytesPerCore);

    // Q_i K_j^T and dO_i V_j^T: Br x Bc x d (B transposed).  (P o Z)^T dO_i, (s dS)^T Q_i: Bc x d x Br (A
    // transposed).  (s dS) K_j: Br x d x Bc.
    if (!gf_host::CubeTiling(platform, cubeType, br, bc, headDim, false, true, tiling.scoresMatmul) ||
        !gf_host::CubeTiling(platform, cubeType, bc, headDim, br, true, false, tiling.keyGradMatmul) ||
        !gf_host::CubeTiling(platform, cubeType, br, headDim, bc, false, false, tiling.queryGradMatmul)) {
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
    for (size_t output = 0; output < 3; ++output) {
        *context->GetOutputShape(output) = *context->GetInputShape(output);
    }
    return GRAPH_SUCCESS;
}

ge::graphStatus InferDataType(gert::InferDataTypeContext* context)
{
    for (size_t output = 0; output < 3; ++output) {
        context->SetOutputDataType(output, context->GetInputDataType(0));
    }
    return GRAPH_SUCCESS;
}

}  // namespace
}  // namespace ge

namespace ops {
class GfFlashAttentionGrad : public OpDef {
public:
    explicit GfFlashAttentionGrad(const char* name) : OpDef(name)
    {
        const std::vector<ge::DataType> inputType = {ge::DT_FLOAT16, ge::DT_BF16};
        const std::vector<ge::DataType> fp32 = {ge::DT_FLOAT, ge::DT_FLOAT};
        const std::vector<ge::Format> nd = {ge::FORMAT_ND, ge::FORMAT_ND};
        this->Input("query").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("key").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("value").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("key_mask").ParamType(REQUIRED).DataType({ge::DT_INT32, ge::DT_INT32}).Format(nd);
        this->Input("seed").ParamType(REQUIRED).DataType({ge::DT_INT64, ge::DT_INT64}).Format(nd);
        this->Input("drop_probability").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("out").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("lse").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("d_out").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Input("d_lse").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Output("d_query").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Output("d_key").ParamType(REQUIRED).DataType(inputType).Format(nd);
        this->Output("d_value").ParamType(REQUIRED).DataType(inputType).Format(nd);

        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc).AddConfig("ascend910b");
    }
};

OP_ADD(GfFlashAttentionGrad);
}  // namespace ops
