// Host-side helpers shared by the four tiling functions: platform queries, Matmul API tilings, error reporting.
#pragma once

#include <cstdint>
#include <cstdio>

#include "graph/types.h"
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"
#include "tiling/tiling_api.h"

namespace gf_host {

// A tiling function that refuses a shape says why on stderr (the framework then reports the op as failed).
inline ge::graphStatus Refuse(const char* op, const char* reason)
{
    std::fprintf(stderr, "mindformer_gf %s: %s\n", op, reason);
    return ge::GRAPH_FAILED;
}

inline bool CubeDataType(ge::DataType dtype, matmul_tiling::DataType* out)
{
    if (dtype == ge::DT_FLOAT16) {
        *out = matmul_tiling::DataType::DT_FLOAT16;
        return true;
    }
    if (dtype == ge::DT_BF16) {
        *out = matmul_tiling::DataType::DT_BF16;
        return true;
    }
    return false;
}

// Tiling of one Matmul object for its largest tile (m x n x k): inputs in GM, ND, in the attention dtype, A and/or
// B read transposed as given; fp32 result to GM. The kernels shrink the shape per tile with SetSingleShape and
// point it at the right rows with SetOrgShape, so only the maximum matters here.
inline bool CubeTiling(const platform_ascendc::PlatformAscendC& platform, matmul_tiling::DataType dtype, int32_t m,
                       int32_t n, int32_t k, bool transposeA, bool transposeB, optiling::TCubeTiling& out)
{
    matmul_tiling::MatmulApiTiling tiling(platform);
    tiling.SetAType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dtype, transposeA);
    tiling.SetBType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dtype, transposeB);
    tiling.SetCType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, matmul_tiling::DataType::DT_FLOAT);
    tiling.SetShape(m, n, k);
    tiling.SetOrgShape(m, n, k);
    tiling.SetBias(false);
    tiling.SetBufferSpace(-1, -1, -1);
    return tiling.GetTiling(out) != -1;
}

template <typename TilingData>
inline void Store(gert::TilingContext* context, TilingData& tiling)
{
    tiling.SaveToBuffer(context->GetRawTilingData()->GetData(), context->GetRawTilingData()->GetCapacity());
    context->GetRawTilingData()->SetDataSize(tiling.GetDataSize());
}

// Workspace = what the Ascend C libraries need (Matmul message queues) + ours, one slice per vector core.
inline void SetWorkspace(gert::TilingContext* context, const platform_ascendc::PlatformAscendC& platform,
                         uint64_t userBytes)
{
    size_t* sizes = context->GetWorkspaceSizes(1);
    sizes[0] = static_cast<size_t>(platform.GetLibApiWorkSpaceSize()) + static_cast<size_t>(userBytes);
}

}  // namespace gf_host
