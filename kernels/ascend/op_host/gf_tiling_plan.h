// Tile sizes and on-chip buffer budgets of the four operators on one Atlas A2 (Ascend 910B) AI core.
//
// Plain C++17 with no CANN header, so that the host tiling functions (op_host/*.cpp) and a g++ unit test
// (tests/ops/test_ascend_project.py) run the same arithmetic: the kernels allocate exactly the buffers counted here
// (each *UbBytes function lists them in the order the kernel's Init() does), and the tiling functions refuse a
// shape whose buffers do not fit instead of letting the kernel overrun the Unified Buffer.
#pragma once

#include <cstdint>

namespace gf_plan {

// Per-core memories of the Atlas A2 AI core (bytes). The vector core (AIV) owns the Unified Buffer; the cube core
// (AIC) owns L1 and the L0A/L0B (operands) and L0C (fp32 accumulator) buffers the Matmul API tiles into.
constexpr uint32_t kUnifiedBufferBytes = 192 * 1024;
constexpr uint32_t kL1Bytes = 512 * 1024;
constexpr uint32_t kL0ABytes = 64 * 1024;
constexpr uint32_t kL0BBytes = 64 * 1024;
constexpr uint32_t kL0CBytes = 128 * 1024;
// Left free in UB for what the runtime and the high-level APIs place there besides our buffers.
constexpr uint32_t kUbReserveBytes = 8 * 1024;
constexpr uint32_t kUbUsableBytes = kUnifiedBufferBytes - kUbReserveBytes;

// Vector instructions and UB<->GM copies work on 32-byte data blocks; 64 fp32 lanes make one 256-byte repeat.
constexpr uint32_t kBlockBytes = 32;
constexpr uint32_t kFloatsPerBlock = kBlockBytes / 4;
constexpr uint32_t kFloatLanes = 64;
// Repeat counts and repeat strides of level-0 vector instructions are 8-bit.
constexpr uint32_t kMaxRepeat = 255;
// GM workspace regions start on 512-byte boundaries (the cube's GM access granule).
constexpr uint32_t kWorkspaceAlign = 512;

// The FlashAttention-2 tile: the key block of kernels/cpu/flash_attention.cc (kKeyBlock = 128). Its query block
// differs: the CPU's 72 rows are a multiple of its 6-row GEMM micro-kernel, while the cube works in 16 x 16
// fractals, so here 64 rows (halved only when a large head_dim does not fit in UB). The tile loop, the online
// softmax and the rescale do not depend on the block sizes, and the CPU tests cover ragged last blocks.
constexpr uint32_t kQueryBlock = 64;
constexpr uint32_t kKeyBlock = 128;
constexpr uint32_t kMinQueryBlock = 16;

// Attention dropout: the vector-unit hash (op_kernel/gf_dropout_lanes.h) keeps kDropoutWordVectors word vectors of
// dropoutRows x Bc lanes and the key block's Bc column codes (the kernel's gf::kDropoutWordVectors; the test checks
// they agree). More rows per call amortise each instruction's pipeline drain over more lanes; beyond 16 rows
// (16 repeats of 256 bytes per instruction) the gain is small, and the UB is worth more to the softmax scratch.
constexpr uint32_t kDropoutWordVectors = 3;
constexpr uint32_t kMaxDropoutRows = 16;
constexpr uint32_t DropoutUbBytes(uint32_t rows, uint32_t bc) { return (kDropoutWordVectors * rows + 1) * bc * 4; }

constexpr uint32_t AlignUp(uint32_t value, uint32_t unit) { return (value + unit - 1) / unit * unit; }
constexpr uint32_t CeilDiv(uint32_t value, uint32_t unit) { return (value + unit - 1) / unit; }

// ---- attention ------------------------------------------------------------------------------------------------

// Buffers of op_kernel/gf_flash_attention.cpp for a br x bc tile, head_dim d, input element size `element` bytes;
// the softmax scratch (SoftmaxFlashV2's temporary) is what is left and is counted separately.
constexpr uint32_t AttentionForwardUbBytes(uint32_t br, uint32_t bc, uint32_t d, uint32_t element)
{
    return 2 * br * bc * 4         // scores queue, double-buffered: S_ij = s Q_i K_j^T in fp32, then P_ij in place
           + br * bc * element     // probs queue: P_ij (dropout applied) in the input dtype, for the cube
           + br * d * 4            // values queue: P_ij V_j in fp32 from the cube
           + br * d * 4            // O_i accumulator, fp32
           + br * d * element      // output queue: O_i in the output dtype
           + 6 * br * kBlockBytes  // row statistics, one block per row: m, l, m_prev, l_prev, exp(m_prev - m), LSE
           + 2 * bc * 4;           // the key block's mask (int32) and its additive bias (fp32)
}

// Buffers of op_kernel/gf_flash_attention_grad.cpp (no softmax scratch: P is rebuilt as exp(S - LSE) directly).
constexpr uint32_t AttentionBackwardUbBytes(uint32_t br, uint32_t bc, uint32_t d, uint32_t element)
{
    return br * bc * 4             // scores queue: S_ij, then P_ij = exp(S_ij - LSE_i)
           + br * bc * 4           // score-gradient queue: dP_ij = dO_i V_j^T, then dS_ij
           + br * bc * element     // probs queue: P_ij o Z_ij in the input dtype, for dV
           + br * bc * element     // scaled score-gradient queue: s dS_ij in the input dtype, for dK and dQ
           + 2 * br * d * element  // row-input queue: dO_i and O_i (or an fp32 accumulator chunk on the way out)
           + 2 * br * d * 4        // dO_i and O_i in fp32 (D_i = rowsum(dO_i o O_i)); the row-sum fold reuses O_i
           + br * d * element      // output queue: dK_j, dV_j or dQ_i rows in the output dtype
           + 5 * br * kBlockBytes  // LSE_i, dLSE_i, D_i (contiguous), LSE_i and D_i broadcast one block per row
           + 2 * bc * 4;           // key-block mask (int32) and bias (fp32)
}

// Workspace (GM) of one vector core: the tiles that go between the vector core and the cube core, which on the A2
// share no on-chip memory.
constexpr uint32_t AttentionForwardWorkspaceBytes(uint32_t br, uint32_t bc, uint32_t d, uint32_t element)
{
    return AlignUp(br * bc * 4, kWorkspaceAlign)          // S_ij from the cube
           + AlignUp(br * bc * element, kWorkspaceAlign)  // P_ij to the cube
           + AlignUp(br * d * 4, kWorkspaceAlign);        // P_ij V_j from the cube
}

constexpr uint32_t AttentionBackwardWorkspaceBytes(uint32_t br, uint32_t bc, uint32_t d, uint32_t element)
{
    return 2 * AlignUp(br * bc * 4, kWorkspaceAlign)        // S_ij and dP_ij from the cube
           + 2 * AlignUp(br * bc * element, kWorkspaceAlign)  // P_ij o Z_ij and s dS_ij to the cube
           + 2 * AlignUp(bc * d * 4, kWorkspaceAlign)         // dK_j and dV_j accumulated by the cube (fp32)
           + AlignUp(br * d * 4, kWorkspaceAlign);            // dQ_i accumulated by the cube (fp32)
}

// One Matmul call's operands and fp32 result fit the cube's L0 buffers in a single base block, and A and B
// double-buffered in L1: then the Matmul API needs no K loop and no L1 refill for our tile products.
constexpr bool CubeTileFits(uint32_t m, uint32_t n, uint32_t k, uint32_t element)
{
    return m * k * element <= kL0ABytes && k * n * element <= kL0BBytes && m * n * 4 <= kL0CBytes &&
           2 * (m * k + k * n) * element <= kL1Bytes;
}

struct AttentionPlan {
    uint32_t queryBlock = 0;
    uint32_t keyBlock = 0;
    uint32_t dropoutRows = 0;   // rows of the probability tile per dropout-mask call
    uint32_t ubBytes = 0;       // counted buffers and the dropout registers, without the softmax scratch
    uint32_t scratchBytes = 0;  // UB left for SoftmaxFlashV2 (forward only)
    uint32_t workspaceBytesPerCore = 0;
    bool fits = false;
};

// Largest query block (64, 32 or 16 rows) whose buffers fit, then as many dropout rows (16, 8, 4, 2 or 1) as fit
// besides; the forward also needs `minScratch` bytes of softmax scratch for that block (the host passes
// GetSoftMaxFlashV2MinTmpSize of the br x bc tile) and gets whatever UB is left.
template <typename MinScratch>
constexpr AttentionPlan PlanAttention(uint32_t headDim, uint32_t element, bool backward, MinScratch minScratch)
{
    AttentionPlan plan;
    plan.keyBlock = kKeyBlock;
    for (uint32_t br = kQueryBlock; br >= kMinQueryBlock; br /= 2) {
        const uint32_t bc = kKeyBlock;
        const uint32_t tiles = backward ? AttentionBackwardUbBytes(br, bc, headDim, element)
                                        : AttentionForwardUbBytes(br, bc, headDim, element);
        const uint32_t scratchNeeded = backward ? 0 : minScratch(br, bc);
        const bool cubeFits = CubeTileFits(br, bc, headDim, element) && CubeTileFits(br, headDim, bc, element) &&
                              CubeTileFits(bc, headDim, br, element);
        for (uint32_t rows = kMaxDropoutRows; rows >= 1 && cubeFits; rows /= 2) {
            const uint32_t ub = tiles + DropoutUbBytes(rows, bc);
            if (ub + scratchNeeded <= kUbUsableBytes) {
                plan.queryBlock = br;
                plan.dropoutRows = rows;
                plan.ubBytes = ub;
                plan.scratchBytes = backward ? 0 : kUbUsableBytes - ub;
                plan.workspaceBytesPerCore = backward ? AttentionBackwardWorkspaceBytes(br, bc, headDim, element)
                                                      : AttentionForwardWorkspaceBytes(br, bc, headDim, element);
                plan.fits = true;
                return plan;
            }
        }
    }
    return plan;
}

// head_dim: rows of 16 half/bf16 values are one 32-byte block, which DataCopy and the vector row operations need;
// the level-0 row instructions take at most 255 blocks of stride.
constexpr bool AttentionHeadDimSupported(uint32_t headDim)
{
    return headDim >= 16 && headDim % 16 == 0 && headDim / kFloatsPerBlock <= kMaxRepeat;
}

// What the attention tiling functions store besides the Matmul / softmax API tilings, for one shape and a device
// with `cubeCores` cube cores (two vector cores each): tile counts, task counts, task costs, the launch's block
// count, and the GM workspace (ours; the host adds what the Ascend C libraries ask for).
struct AttentionLaunch {
    AttentionPlan plan;
    uint32_t queryBlocksPerHead = 0;
    uint32_t keyBlocksPerHead = 0;  // backward only
    uint32_t taskCount = 0;         // forward: (cell, head, query block); backward: key tasks + query tasks
    uint32_t keyTaskCount = 0;      // backward: (cell, head, key block), each walking every query block
    uint32_t queryTaskCount = 0;    // backward: (cell, head, query block), each walking every key block
    uint32_t keyTaskCost = 0;       // backward: tile products per key task (S, dP, dV, dK per query block)
    uint32_t queryTaskCost = 0;     // backward: tile products per query task (S, dP, dQ per key block)
    uint32_t blockDim = 0;          // launch blocks: one cube core + two vector cores each
    uint32_t vectorCores = 0;       // 2 * blockDim: the cores the tasks are split over
    uint32_t scoresWorkspaceBytes = 0;
    uint32_t probsWorkspaceBytes = 0;
    uint32_t keyAccumulatorBytes = 0;  // backward only
    uint64_t workspaceBytes = 0;       // vectorCores slices of plan.workspaceBytesPerCore
};

template <typename MinScratch>
constexpr AttentionLaunch PlanAttentionLaunch(uint32_t batch, uint32_t heads, uint32_t length, uint32_t headDim,
                                              uint32_t element, bool backward, uint32_t cubeCores,
                                              MinScratch minScratch)
{
    AttentionLaunch launch;
    launch.plan = PlanAttention(headDim, element, backward, minScratch);
    if (!launch.plan.fits) {
        return launch;
    }
    const uint32_t br = launch.plan.queryBlock;
    const uint32_t bc = launch.plan.keyBlock;
    const uint32_t pairs = batch * heads;
    launch.queryBlocksPerHead = CeilDiv(length, br);
    if (backward) {
        launch.keyBlocksPerHead = CeilDiv(length, bc);
        launch.keyTaskCount = pairs * launch.keyBlocksPerHead;
        launch.queryTaskCount = pairs * launch.queryBlocksPerHead;
        launch.keyTaskCost = 4 * launch.queryBlocksPerHead;
        launch.queryTaskCost = 3 * launch.keyBlocksPerHead;
        launch.taskCount = launch.keyTaskCount + launch.queryTaskCount;
        launch.keyAccumulatorBytes = AlignUp(bc * headDim * 4, kWorkspaceAlign);
    } else {
        launch.taskCount = pairs * launch.queryBlocksPerHead;
    }
    // No more blocks than two tasks each can use.
    const uint32_t tasks = launch.taskCount;
    launch.blockDim = tasks < 2 * cubeCores ? CeilDiv(tasks, 2) : cubeCores;
    launch.blockDim = launch.blockDim > 0 ? launch.blockDim : 1;
    launch.vectorCores = 2 * launch.blockDim;
    launch.scoresWorkspaceBytes = AlignUp(br * bc * 4, kWorkspaceAlign);
    launch.probsWorkspaceBytes = AlignUp(br * bc * element, kWorkspaceAlign);
    launch.workspaceBytes = static_cast<uint64_t>(launch.vectorCores) * launch.plan.workspaceBytesPerCore;
    return launch;
}

// ---- residual add + LayerNorm ----------------------------------------------------------------------------------

// Rows of a LayerNorm tile: any count from 1 to 64; the per-row scalars (statistics, their broadcasts) are kept
// for a multiple of 8 rows, because Brcb broadcasts 8 rows per repeat and 8 fp32 values make one aligned block.
constexpr uint32_t kMaxLayerNormRows = 64;
constexpr uint32_t RowSlots(uint32_t rows) { return AlignUp(rows, kFloatsPerBlock); }

// Buffers of op_kernel/gf_add_layer_norm.cpp for `rows` rows of hidden size h, with `buffers` (2 = double
// buffering, 1 when the rows do not fit otherwise) per queue.
constexpr uint32_t LayerNormForwardUbBytes(uint32_t rows, uint32_t h, uint32_t element, uint32_t buffers)
{
    return buffers * 2 * rows * h * element           // input queue: x and residual rows
           + buffers * rows * h * element             // output queue: y rows
           + buffers * 2 * RowSlots(rows) * 4         // statistics queue: mean and rstd
           + 2 * rows * h * 4                         // z = x + residual, and the squares
           + rows * kFloatLanes * 4                   // row-sum fold: each row folded to 64 lanes
           + 3 * RowSlots(rows) * kBlockBytes         // mean and rstd broadcast one block per row, ones
           + 2 * h * 4;                               // gamma and beta, fp32, loaded once
}

// Backward, row phase (dx): dy, x and residual in, dx out, three fp32 rows.
constexpr uint32_t LayerNormBackwardUbBytes(uint32_t rows, uint32_t h, uint32_t element, uint32_t buffers)
{
    return buffers * 3 * rows * h * element           // input queue: dy, x, residual
           + buffers * rows * h * element             // output queue: dx
           + 3 * rows * h * 4                         // zhat, g = dy gamma, and g o zhat
           + rows * kFloatLanes * 4                   // row-sum fold
           + buffers * 4 * RowSlots(rows) * 4         // statistics queue: mean, rstd, dmean, drstd
           + 2 * RowSlots(rows) * 4                   // rowsum g and rowsum g o zhat, then the coefficients
           + 3 * RowSlots(rows) * kBlockBytes         // mean (then the zhat coefficient), rstd, constant, broadcast
           + h * 4;                                   // gamma, fp32
}

// Backward, column phase (dgamma, dbeta): a slice of `width` columns of `rows` rows.
constexpr uint32_t LayerNormColumnUbBytes(uint32_t rows, uint32_t width, uint32_t element)
{
    return 2 * 3 * rows * width * element  // input queue, double-buffered: dy, x, residual slices
           + 2 * rows * width * 4          // zhat (then dy o zhat) and dy, fp32
           + 2 * rows * 4                  // statistics queue: mean and rstd as loaded
           + 2 * rows * kBlockBytes        // mean and rstd broadcast one block per row
           + 2 * 2 * width * 4;            // dgamma and dbeta accumulators, and their output queue
}

struct LayerNormPlan {
    uint32_t rowsPerTile = 0;        // rows of one forward / backward row-phase tile
    uint32_t bufferCount = 0;        // buffers per row queue: 2, or 1 for the widest rows
    uint32_t ubBytes = 0;
    uint32_t columnSlice = 0;        // backward column phase: columns per task
    uint32_t rowsPerColumnTile = 0;  // backward column phase: rows per tile (power of two, for the tree sum)
    uint32_t columnUbBytes = 0;
    bool fits = false;
};

// Hidden sizes in whole 16-column slices (one 32-byte block of half/bf16, two of fp32: rows stay block-aligned in
// every dtype and the backward column phase splits them evenly) whose fp32 row stride fits the 8-bit repeat stride.
constexpr bool LayerNormHiddenSupported(uint32_t h)
{
    return h > 0 && h % 16 == 0 && h / kFloatsPerBlock <= kMaxRepeat;
}

// Double buffering with as many rows as fit (up to 64), else single buffering; the widest rows that fit win over
// overlap of copies and arithmetic, since a tile of few rows runs short vector instructions.
constexpr LayerNormPlan PlanLayerNorm(uint32_t h, uint32_t element, bool backward)
{
    LayerNormPlan plan;
    if (!LayerNormHiddenSupported(h)) {
        return plan;
    }
    for (uint32_t buffers = 2; buffers >= 1 && plan.rowsPerTile == 0; --buffers) {
        const uint32_t minimumRows = buffers == 2 ? kFloatsPerBlock : 1;
        for (uint32_t rows = kMaxLayerNormRows; rows >= minimumRows; --rows) {
            const uint32_t bytes = backward ? LayerNormBackwardUbBytes(rows, h, element, buffers)
                                            : LayerNormForwardUbBytes(rows, h, element, buffers);
            if (bytes <= kUbUsableBytes) {
                plan.rowsPerTile = rows;
                plan.bufferCount = buffers;
                plan.ubBytes = bytes;
                break;
            }
        }
    }
    if (plan.rowsPerTile == 0) {
        return plan;
    }
    if (!backward) {
        plan.fits = true;
        return plan;
    }
    // 16 columns: one 32-byte block of half/bf16 per row, the narrowest slice DataCopy moves without padding, so
    // that hidden/16 tasks share the column sums out over the cores.
    plan.columnSlice = 16;
    for (uint32_t rows = 128; rows >= 8; rows /= 2) {
        if (LayerNormColumnUbBytes(rows, plan.columnSlice, element) <= kUbUsableBytes) {
            plan.rowsPerColumnTile = rows;
            plan.columnUbBytes = LayerNormColumnUbBytes(rows, plan.columnSlice, element);
            plan.fits = true;
            return plan;
        }
    }
    return plan;
}

// What the LayerNorm tiling functions store, for `rows` rows of width h on a device with `vectorCores` vector cores.
struct LayerNormLaunch {
    LayerNormPlan plan;
    uint32_t tileCount = 0;   // row tiles of plan.rowsPerTile rows
    uint32_t sliceCount = 0;  // backward: column slices of plan.columnSlice columns
    uint32_t coreCount = 0;   // vector cores launched: as many as the larger phase can use
};

constexpr LayerNormLaunch PlanLayerNormLaunch(uint32_t rows, uint32_t h, uint32_t element, bool backward,
                                              uint32_t vectorCores)
{
    LayerNormLaunch launch;
    launch.plan = PlanLayerNorm(h, element, backward);
    if (!launch.plan.fits) {
        return launch;
    }
    launch.tileCount = CeilDiv(rows, launch.plan.rowsPerTile);
    launch.sliceCount = backward ? h / launch.plan.columnSlice : 0;
    const uint32_t wanted = launch.tileCount > launch.sliceCount ? launch.tileCount : launch.sliceCount;
    launch.coreCount = wanted < vectorCores ? (wanted > 0 ? wanted : 1) : vectorCores;
    return launch;
}

}  // namespace gf_plan
