// GfAddLayerNorm: operator definition, shape inference and tiling (host side of op_kernel/gf_add_layer_norm.cpp).
//
// Inputs  x, residual  [..., hidden] fp16 | bf16 | fp32
//         weight, bias [hidden] fp32 (gamma, beta)
//         eps          [1] fp32
// Outputs y            like x
//         mean, rstd   [...] fp32, the row statistics of x + residual kept for the backward
// The inputs of the CPU kernel AddLayerNormForward (kernels/cpu/add_layer_norm.cc), same order and names.
#include "gf_add_layer_norm_tiling.h"
#include "gf_host_common.h"
#include "gf_tiling_plan.h"

namespace optiling {
namespace {

constexpr const char* kOp = "GfAddLayerNorm";

ge::graphStatus TilingFunc(gert::TilingContext* context)
{
    const gert::Shape& x = context->GetInputShape(0)->GetStorageShape();
    if (x.GetDimNum() < 1 || context->GetInputShape(1)->GetStorageShape() != x) {
        return gf_host::Refuse(kOp, "x and residual must have the same shape, with the normalised axis last");
    }
    const uint32_t hidden = static_cast<uint32_t>(x.GetDim(x.GetDimNum() - 1));
    const uint64_t rows = hidden == 0 ? 0 : static_cast<uint64_t>(x.GetShapeSize()) / hidden;
    const uint32_t element = static_cast<uint32_t>(ge::GetSizeByDataType(context->GetInputDesc(0)->GetDataType()));
    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    const gf_plan::LayerNormLaunch launch =
        gf_plan::PlanLayerNormLaunch(static_cast<uint32_t>(rows), hidden, element, false, platform.GetCoreNumAiv());
    const gf_plan::LayerNormPlan& plan = launch.plan;
    if (!plan.fits) {
        return gf_host::Refuse(kOp, "the hidden size must be a multiple of 16, at most 2040 and fit the Unified Buffer");
    }
    GfAddLayerNormTilingData tiling;
    tiling.set_rowCount(static_cast<uint32_t>(rows));
    tiling.set_hiddenSize(hidden);
    tiling.set_rowsPerTile(plan.rowsPerTile);
    tiling.set_bufferCount(plan.bufferCount);
    tiling.set_tileCount(launch.tileCount);
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
    const gert::Shape* x = context->GetInputShape(0);
    *context->GetOutputShape(0) = *x;
    for (size_t output = 1; output < 3; ++output) {
        gert::Shape* statistics = context->GetOutputShape(output);
        statistics->SetDimNum(x->GetDimNum() - 1);
        for (size_t axis = 0; axis + 1 < x->GetDimNum(); ++axis) {
            statistics->SetDim(axis, x->GetDim(axis));
        }
    }
    return GRAPH_SUCCESS;
}

ge::graphStatus InferDataType(gert::InferDataTypeContext* context)
{
    context->SetOutputDataType(0, context->GetInputDataType(0));
    context->SetOutputDataType(1, ge::DT_FLOAT);
    context->SetOutputDataType(2, ge::DT_FLOAT);
    return GRAPH_SUCCESS;
}

}  // namespace
}  // namespace ge

namespace ops {
class GfAddLayerNorm : public OpDef {
public:
    explicit GfAddLayerNorm(const char* name) : OpDef(name)
    {
        // One column per combination: x in fp16, bf16 or fp32; parameters and statistics always fp32.
        const std::vector<ge::DataType> rowType = {ge::DT_FLOAT16, ge::DT_BF16, ge::DT_FLOAT};
        const std::vector<ge::DataType> fp32 = {ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT};
        const std::vector<ge::Format> nd = {ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND};
        this->Input("x").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Input("residual").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Input("weight").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("bias").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Input("eps").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Output("y").ParamType(REQUIRED).DataType(rowType).Format(nd);
        this->Output("mean").ParamType(REQUIRED).DataType(fp32).Format(nd);
        this->Output("rstd").ParamType(REQUIRED).DataType(fp32).Format(nd);

        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc).AddConfig("ascend910b");
    }
};

OP_ADD(GfAddLayerNorm);
}  // namespace ops
