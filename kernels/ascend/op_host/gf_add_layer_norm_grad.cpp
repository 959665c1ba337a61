// GfAddLayerNormGrad: operator definition, shape inference and tiling (host side of
// op_kernel/gf_add_layer_norm_grad.cpp).
//
// Inputs  dy, x, residual     [..., hidden] fp16 | bf16 | fp32
//         weight              [hidden] fp32
//         mean, rstd          [...] fp32 (GfAddLayerNorm's outputs)
//         d_mean, d_rstd      [...] fp32 (gradients reaching them; zeros unless a caller uses the statistics)
// Outputs dx                  like x (also the residual's gradient)
//         d_weight, d_bias    [hidden] fp32
// The inputs of the CPU kernel AddLayerNormBackward (kernels/cpu/add_layer_norm.cc), same order and names.
#include "gf_add_layer_norm_grad_tiling.h"
#include "gf_host_common.h"
#include "gf_tiling_plan.h"

namespace optiling {
namespace {

constexpr const char* kOp = "GfAddLayerNormGrad";

ge::graphStatus TilingFunc(gert::TilingContext* context)
{
    const gert::Shape& dy = context->GetInputShape(0)->GetStorageShape();
    for (size_t input = 1; input <= 2; ++input) {
        if (context->GetInputShape(input)->GetStorageShape() != dy) {
            return gf_host::Refuse(kOp, "dy, x and residual must have the same shape");
        }
    }
    if (dy.GetDimNum() < 1) {
        return gf_host::Refuse(kOp, "the input must have the normalised axis last");
    }
    const uint32_t hidden = static_cast<uint32_t>(dy.GetDim(dy.GetDimNum() - 1));
    const uint64_t rows = hidden == 0 ? 0 : static_cast<uint64_t>(dy.GetShapeSize()) / hidden;
    const uint32_t element = static_cast<uint32_t>(ge::GetSizeByDataType(context->GetInputDesc(0)->GetDataType()));
    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    const gf_plan::LayerNormLaunch launch =
        gf_plan::PlanLayerNormLaunch(static_cast<uint32_t>(rows), hidden, element, true, platform.GetCoreNumAiv());
    const gf_plan::LayerNormPlan& plan = launch.plan;
    if (!plan.fits) {
        return gf_host::Refuse(kOp, "the hidden size must be a multiple of 16, at most 2040 and fit the Unified Buffer");
    }
    GfAddLayerNormGradTilingData tiling;
    tiling.set_rowCount(static_cast<uint32_t>(rows));
    tiling.set_hiddenSize(hidden);
    tiling.set_rowsPerTile(plan.rowsPerTile);
    tiling.set_bufferCount(plan.bufferCount);
    tiling.set_tileCount(launch.tileCount);
    tiling.set_columnSlice(plan.columnSlice);
    tiling.set_sliceCount(launch.sliceCount);
    tiling.set_rowsPerColumnTile(plan.rowsPerColumnTile);

    // Both phases run on the same cores: as many as the larger phase can use.
    tiling.set_coreCount(launch.coreCount);
    context->SetBlockDim(launch.coreCount);
    gf_host::Store(context, tiling);
    gf_host::SetWorkspace(context, platform, 0);
    return ge::GRAPH_SUCCESS;
}

}  // namespace
}  // namespace optiling

namespace ge {
namespace {

ge::graphStatus InferShape(gert::InferShapeContext* context)
{
    *context->GetOutputShape(0) = *context->GetInputShape(1);
    *context->GetOutputShape(1) = *context->GetInputShape(3);
    *context->GetOutputShape(2) = *context->GetInputShape(3);
    return GRAPH_SUCCESS;
}

ge::graphStatus InferDataType(gert::InferDataTypeContext* context)
{
    context->SetOutputDataType(0, context->GetInputDataType(1));
    context->SetOutputDataType(1, ge::DT_FLOAT);
    context->SetOutputDataType(2, ge::DT_FLOAT);
    return GRAPH_SUCCESS;
}

}  // namespace
}  // namespace ge

namespace ops {
class GfAddLayerNormGrad : public OpDef {
public:
    explicit GfAddLayerNormGrad(const char* name) : OpDef(name)
    {
        const std::vector<ge::DataType> rowType = {ge::DT_FLOAT16, ge::DT_BF16, ge::DT_FLOAT};
        const std::vector<ge::DataType> fp32 = {ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT};
        const std::vector<ge::Format> nd = {ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND};
        this->Input("dy").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Input("x").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Input("residual").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Input("weight").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("mean").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("rstd").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("d_mean").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("d_rstd").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Output("dx").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Output("d_weight").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Output("d_bias").ParamType(REQUIRED).DataType(fp32).Format(nd);

        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc).AddConfig("ascend910b");
    }
};

OP_ADD(GfAddLayerNormGrad);
}  // namespace ops
