// Launch of one op_kernel source on the functional model: compiled once per (kernel, dtype) with
//   g++ -std=c++20 -I api_model -I op_host -DGFM_KERNEL_SOURCE='"<path>/gf_<op>.cpp"' -DGFM_OP=<n> -DDTYPE_X=...
// into a shared library whose gfm_launch() the Python driver (tools/ascend_model.py) calls with numpy buffers.
//
// What a device launch does, done here in order: the host plan (op_host/gf_tiling_plan.h, the arithmetic the
// tiling functions call) for the shape; the tiling struct filled as the op_host TilingFunc fills it (the Matmul
// TCubeTiling and SoftMaxTiling, which CANN's tiling library fills on a device, by the documented rules below); the
// workspace (system part + one slice per vector core, each slice registered as that core's only); then every core
// of the grid, one after another: for a vector-only kernel blockDim vector cores, for a MIX kernel 2 * blockDim
// vector cores (GetBlockIdx 0 .. 2 * blockDim - 1) with the Matmul calls answered inline.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "kernel_operator.h"
#include "lib/matmul_intf.h"
#include "lib/activation/softmaxflashv2.h"

#include "gf_tiling_plan.h"

#define GFM_OP_ADD_LAYER_NORM 1
#define GFM_OP_ADD_LAYER_NORM_GRAD 2
#define GFM_OP_FLASH_ATTENTION 3
#define GFM_OP_FLASH_ATTENTION_GRAD 4

#if GFM_OP == GFM_OP_ADD_LAYER_NORM
#include "gf_add_layer_norm_tiling.h"
using optiling::GfAddLayerNormTilingData;
#define GFM_TILING_TYPE GfAddLayerNormTilingData
#elif GFM_OP == GFM_OP_ADD_LAYER_NORM_GRAD
#include "gf_add_layer_norm_grad_tiling.h"
using optiling::GfAddLayerNormGradTilingData;
#define GFM_TILING_TYPE GfAddLayerNormGradTilingData
#elif GFM_OP == GFM_OP_FLASH_ATTENTION
#include "gf_flash_attention_tiling.h"
using optiling::GfFlashAttentionTilingData;
#define GFM_TILING_TYPE GfFlashAttentionTilingData
#elif GFM_OP == GFM_OP_FLASH_ATTENTION_GRAD
#include "gf_flash_attention_grad_tiling.h"
using optiling::GfFlashAttentionGradTilingData;
#define GFM_TILING_TYPE GfFlashAttentionGradTilingData
#endif

#include GFM_KERNEL_SOURCE

namespace {

// 910B: 24 AI cores (cube), 48 vector cores.
constexpr uint32_t kCubeCores = 24;
constexpr uint32_t kVectorCores = 48;
// The system workspace the Matmul messages would use (GetLibApiWorkSpaceSize on a device); the model sends none.
constexpr uint64_t kSysWorkspaceBytes = 16 * 1024;

[[maybe_unused]] uint32_t Align16(uint32_t v) { return (v + 15u) / 16u * 16u; }

// TCubeTiling for one tile product m x n x k with 16-bit A and B (TCubeTiling结构体.md): one core, the whole tile
// one base block (base sizes 16-aligned), A and B double-buffered in L1 (depth = step * 2), L0A / L0B
// double-buffered when two blocks fit, L0C single. Matmul::Init checks it against the L1 / L0 capacities.
[[maybe_unused]] TCubeTiling FillCubeTiling(uint32_t m, uint32_t n, uint32_t k)
{
    TCubeTiling t;
    t.usedCoreNum = 1;
    t.M = static_cast<int32_t>(m);
    t.N = static_cast<int32_t>(n);
    t.Ka = t.Kb = static_cast<int32_t>(k);
    t.singleCoreM = t.M;
    t.singleCoreN = t.N;
    t.singleCoreK = t.Ka;
    t.baseM = static_cast<int32_t>(Align16(m));
    t.baseN = static_cast<int32_t>(Align16(n));
    t.baseK = static_cast<int32_t>(Align16(k));
    t.stepM = t.stepN = t.stepKa = t.stepKb = 1;
    t.depthA1 = t.depthB1 = 2;
    t.dbL0A = 2 * t.baseM * t.baseK * 2 < 64 * 1024 ? 2 : 1;
    t.dbL0B = 2 * t.baseN * t.baseK * 2 < 64 * 1024 ? 2 : 1;
    t.dbL0C = 1;
    t.iterateOrder = 0;
    return t;
}

// SoftmaxFlashV2's temporary: the model's stand-in for GetSoftMaxFlashV2MinTmpSize (CANN's tiling library, not
// published): two fp32 reduction blocks per row.
[[maybe_unused]] uint32_t SoftmaxMinScratch(uint32_t br, uint32_t) { return 2 * br * 32; }

struct Buffers {
    int count;
    uint8_t** pointers;
    const uint64_t* bytes;
    const char* const* names;
    const int* written;  // 1: the kernel may write it (tracked for hazards and races); 0: read-only input
};

void RegisterGm(const Buffers& b)
{
    gfm::State& m = gfm::Model();
    m.gm.clear();
    for (int i = 0; i < b.count; ++i) {
        gfm::GmAllocation a;
        a.base = b.pointers[i];
        a.bytes = b.bytes[i];
        a.name = b.names[i];
        if (b.written[i]) {
            a.shadow.resize((a.bytes + gfm::kGmGranule - 1) / gfm::kGmGranule);
        }
        m.gm.push_back(std::move(a));
    }
}

void RegisterWorkspace(uint8_t* workspace, uint32_t cores, uint64_t perCore)
{
    gfm::State& m = gfm::Model();
    gfm::GmAllocation sys;
    sys.base = workspace;
    sys.bytes = kSysWorkspaceBytes;
    sys.name = "system workspace";
    m.gm.push_back(std::move(sys));
    for (uint32_t c = 0; c < cores && perCore > 0; ++c) {
        gfm::GmAllocation slice;
        slice.base = workspace + kSysWorkspaceBytes + c * perCore;
        slice.bytes = perCore;
        slice.name = "workspace slice " + std::to_string(c);
        slice.ownerCore = static_cast<int>(c);
        slice.shadow.resize((perCore + gfm::kGmGranule - 1) / gfm::kGmGranule);
        m.gm.push_back(std::move(slice));
    }
}

void AfterCore(const char* kernel)
{
    for (const auto& f : gfm::Model().flags) {
        throw gfm::ModelError(std::string(kernel) + ": SetFlag<" + gfm::PipeName(f.src) + "_" + gfm::PipeName(f.dst) +
                              ">(" + std::to_string(f.id) + ") never waited for by the end of the kernel");
    }
}

}  // namespace

extern "C" {

// shape: LayerNorm (rows, hidden); attention (batch, heads, length, headDim).
// Buffers in the kernel's argument order (inputs, outputs). Returns 0, or 1 with the first failed check in `error`.
// stats[0] = vector cores run, stats[1] = peak UB bytes, stats[2] = instructions, stats[3] = blockDim.
int gfm_launch(const uint32_t* shape, int bufferCount, uint8_t** pointers, const uint64_t* bytes,
               const char* const* names, const int* written, int hazardChecks, char* error, int errorBytes,
               uint64_t* stats)
{
    error[0] = 0;
    try {
        gfm::State& m = gfm::Model();
        m.hazardChecks = hazardChecks != 0;
        m.ubPeakBytes = 0;
        m.instructions = 0;
        const Buffers b{bufferCount, pointers, bytes, names, written};
        RegisterGm(b);
        GFM_TILING_TYPE tiling{};
        uint32_t cores = 0, blockDim = 0;
        uint64_t workspacePerCore = 0;
#if GFM_OP == GFM_OP_ADD_LAYER_NORM || GFM_OP == GFM_OP_ADD_LAYER_NORM_GRAD
        constexpr bool backward = GFM_OP == GFM_OP_ADD_LAYER_NORM_GRAD;
        const uint32_t rows = shape[0], hidden = shape[1];
        const gf_plan::LayerNormLaunch launch =
            gf_plan::PlanLayerNormLaunch(rows, hidden, sizeof(DTYPE_X), backward, kVectorCores);
        if (!launch.plan.fits) {
            throw gfm::ModelError("host plan: the hidden size does not fit (the tiling function would refuse it)");
        }
        tiling.set_rowCount(rows);
        tiling.set_hiddenSize(hidden);
        tiling.set_rowsPerTile(launch.plan.rowsPerTile);
        tiling.set_bufferCount(launch.plan.bufferCount);
        tiling.set_tileCount(launch.tileCount);
        tiling.set_coreCount(launch.coreCount);
#if GFM_OP == GFM_OP_ADD_LAYER_NORM_GRAD
        tiling.set_columnSlice(launch.plan.columnSlice);
        tiling.set_sliceCount(launch.sliceCount);
        tiling.set_rowsPerColumnTile(launch.plan.rowsPerColumnTile);
#endif
        blockDim = launch.coreCount;
        cores = blockDim;
#else
        constexpr bool backward = GFM_OP == GFM_OP_FLASH_ATTENTION_GRAD;
        const uint32_t batch = shape[0], heads = shape[1], length = shape[2], headDim = shape[3];
        if (!gf_plan::AttentionHeadDimSupported(headDim)) {
            throw gfm::ModelError("host plan: head_dim must be a multiple of 16");
        }
        const gf_plan::AttentionLaunch launch = gf_plan::PlanAttentionLaunch(
            batch, heads, length, headDim, 2, backward, kCubeCores,
            backward ? +[](uint32_t, uint32_t) { return 0u; } : +SoftmaxMinScratch);
        if (!launch.plan.fits) {
            throw gfm::ModelError("host plan: head_dim too large for the Unified Buffer");
        }
        const uint32_t br = launch.plan.queryBlock, bc = launch.plan.keyBlock;
        tiling.set_batch(batch);
        tiling.set_heads(heads);
        tiling.set_seqLen(length);
        tiling.set_headDim(headDim);
        tiling.set_queryBlock(br);
        tiling.set_keyBlock(bc);
        tiling.set_dropoutRows(launch.plan.dropoutRows);
        tiling.set_queryBlocksPerHead(launch.queryBlocksPerHead);
        tiling.set_scale(1.0f / std::sqrt(static_cast<float>(headDim)));
        tiling.set_coreCount(launch.vectorCores);
        tiling.set_scoresWorkspaceBytes(launch.scoresWorkspaceBytes);
        tiling.set_probsWorkspaceBytes(launch.probsWorkspaceBytes);
        tiling.set_workspaceBytesPerCore(launch.plan.workspaceBytesPerCore);
        tiling.scoresMatmul = FillCubeTiling(br, bc, headDim);
#if GFM_OP == GFM_OP_FLASH_ATTENTION
        tiling.set_taskCount(launch.taskCount);
        tiling.set_scratchBytes(launch.plan.scratchBytes);
        tiling.softmaxTiling.srcM = br;
        tiling.softmaxTiling.srcK = bc;
        tiling.softmaxTiling.srcSize = br * bc;
        tiling.valuesMatmul = FillCubeTiling(br, headDim, bc);
#else
        tiling.set_keyBlocksPerHead(launch.keyBlocksPerHead);
        tiling.set_keyTaskCount(launch.keyTaskCount);
        tiling.set_queryTaskCount(launch.queryTaskCount);
        tiling.set_keyTaskCost(launch.keyTaskCost);
        tiling.set_queryTaskCost(launch.queryTaskCost);
        tiling.set_keyAccumulatorBytes(launch.keyAccumulatorBytes);
        tiling.keyGradMatmul = FillCubeTiling(bc, headDim, br);
        tiling.queryGradMatmul = FillCubeTiling(br, headDim, bc);
#endif
        blockDim = launch.blockDim;
        cores = launch.vectorCores;
        workspacePerCore = launch.plan.workspaceBytesPerCore;
#endif
        std::vector<uint8_t> workspace(kSysWorkspaceBytes + cores * workspacePerCore, 0xFF);
        RegisterWorkspace(workspace.data(), cores, workspacePerCore);
        gfm::Launch().workspace = workspace.data();
        gfm::Launch().sysWorkspaceBytes = kSysWorkspaceBytes;
        for (uint32_t core = 0; core < cores; ++core) {
            m.StartCore(static_cast<int>(core));
            gfm::Launch().kernelType = 0;
#if GFM_OP == GFM_OP_ADD_LAYER_NORM
            gf_add_layer_norm(pointers[0], pointers[1], pointers[2], pointers[3], pointers[4], pointers[5],
                              pointers[6], pointers[7], workspace.data(), reinterpret_cast<GM_ADDR>(&tiling));
            const char* kernel = "gf_add_layer_norm";
            const int expectedType = KERNEL_TYPE_AIV_ONLY;
#elif GFM_OP == GFM_OP_ADD_LAYER_NORM_GRAD
            gf_add_layer_norm_grad(pointers[0], pointers[1], pointers[2], pointers[3], pointers[4], pointers[5],
                                   pointers[6], pointers[7], pointers[8], pointers[9], pointers[10], workspace.data(),
                                   reinterpret_cast<GM_ADDR>(&tiling));
            const char* kernel = "gf_add_layer_norm_grad";
            const int expectedType = KERNEL_TYPE_AIV_ONLY;
#elif GFM_OP == GFM_OP_FLASH_ATTENTION
            gf_flash_attention(pointers[0], pointers[1], pointers[2], pointers[3], pointers[4], pointers[5],
                               pointers[6], pointers[7], workspace.data(), reinterpret_cast<GM_ADDR>(&tiling));
            const char* kernel = "gf_flash_attention";
            const int expectedType = KERNEL_TYPE_MIX_AIC_1_2;
#else
            gf_flash_attention_grad(pointers[0], pointers[1], pointers[2], pointers[3], pointers[4], pointers[5],
                                    pointers[6], pointers[7], pointers[8], pointers[9], pointers[10], pointers[11],
                                    pointers[12], workspace.data(), reinterpret_cast<GM_ADDR>(&tiling));
            const char* kernel = "gf_flash_attention_grad";
            const int expectedType = KERNEL_TYPE_MIX_AIC_1_2;
#endif
            AfterCore(kernel);
            if (gfm::Launch().kernelType != expectedType) {
                throw gfm::ModelError(std::string(kernel) + ": KERNEL_TASK_TYPE_DEFAULT is not the launch's core type");
            }
        }
        stats[0] = cores;
        stats[1] = m.ubPeakBytes;
        stats[2] = m.instructions;
        stats[3] = blockDim;
        m.gm.clear();
        return 0;
    } catch (const std::exception& e) {
        std::snprintf(error, static_cast<size_t>(errorBytes), "%s", e.what());
        gfm::Model().gm.clear();
        return 1;
    }
}

}  // extern "C"
