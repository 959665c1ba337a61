// GfFlashAttention: FlashAttention-2 forward (Dao, 2023) for the Atlas A2, the algorithm of
// kernels/cpu/flash_attention.cc (equations: mindformer_gf/reference/attention.py) mapped onto the split AI core:
//
//   per (cell, head) and block of Br query rows Q_i, walking key blocks K_j, V_j of Bc keys:
//     S_ij = s Q_i K_j^T                           cube (Matmul API), fp16/bf16 in, fp32 out
//     m' = max(m, rowmax S_ij); P_ij = exp(S_ij - m'); l = exp(m - m') l + rowsum P_ij; m = m'
//                                                  vector (SoftmaxFlashV2 with update), fp32
//     P_ij o= Z_ij (dropout, training only)        vector unit (gf_dropout_lanes.h), keys on the scalar unit
//     O_i = diag(exp(m_prev - m)) O_i + P_ij V_j   cube for P_ij V_j, vector for the rescale, fp32
//   and at the end O_i /= l, LSE_i = m + log l.
//
// On the A2 the cube core (AIC) and its two vector cores (AIV) share no on-chip memory, so the tiles the two
// sides exchange (S_ij, P_ij, P_ij V_j) go through a per-vector-core GM workspace. The kernel runs on the vector
// cores; REGIST_MATMUL_OBJ turns the cube core into the server of their Matmul calls.
//
// Keys: a right-padded key mask (the Geneformer case) is walked only over its n valid keys, so padding costs nothing;
// any other mask walks all L keys with the invalid columns pushed to kMaskedScore (the CPU kernel's -inf). A cell
// with no valid key gets O = 0 and LSE = 0, as on the CPU.
#include "kernel_operator.h"
#include "lib/activation/softmaxflashv2.h"
#include "lib/matmul_intf.h"

#include "gf_dropout_hash.h"
#include "gf_dropout_lanes.h"
#include "gf_task_split.h"
#include "gf_tile_ops.h"

namespace {

using AscendC::GlobalTensor;
using AscendC::HardEvent;
using AscendC::LocalTensor;
using AscendC::TPosition;

// The cell's keys as the CPU's split_keys sees them.
struct CellKeys {
    uint32_t validCount = 0;
    uint32_t extent = 0;  // keys [0, extent) are walked
    bool prefix = true;   // valid keys are exactly [0, validCount): no per-column mask needed
};

template <typename T>
class FlashAttentionForward {
public:
    using ScoresMatmul = AscendC::Matmul<AscendC::MatmulType<TPosition::GM, CubeFormat::ND, T, false>,
                                         AscendC::MatmulType<TPosition::GM, CubeFormat::ND, T, true>,
                                         AscendC::MatmulType<TPosition::GM, CubeFormat::ND, float>>;
    using ValuesMatmul = AscendC::Matmul<AscendC::MatmulType<TPosition::GM, CubeFormat::ND, T, false>,
                                         AscendC::MatmulType<TPosition::GM, CubeFormat::ND, T, false>,
                                         AscendC::MatmulType<TPosition::GM, CubeFormat::ND, float>>;
    ScoresMatmul scoresMatmul;  // S_ij = Q_i K_j^T
    ValuesMatmul valuesMatmul;  // P_ij V_j

    __aicore__ inline void Init(GM_ADDR query, GM_ADDR key, GM_ADDR value, GM_ADDR keyMask, GM_ADDR seed,
                                GM_ADDR dropProbability, GM_ADDR out, GM_ADDR lse, GM_ADDR userWorkspace,
                                const GfFlashAttentionTilingData* tiling, AscendC::TPipe* pipe)
    {
        tiling_ = tiling;
        batch_ = tiling->batch;
        heads_ = tiling->heads;
        length_ = tiling->seqLen;
        headDim_ = tiling->headDim;
        br_ = tiling->queryBlock;
        bc_ = tiling->keyBlock;
        scale_ = tiling->scale;

        queryGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(query));
        keyGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(key));
        valueGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(value));
        maskGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(keyMask));
        outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out));
        lseGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(lse));

        // Each vector core owns one slice of the workspace (sizes: gf_plan::AttentionForwardWorkspaceBytes).
        core_ = AscendC::GetBlockIdx();
        GM_ADDR mine = userWorkspace + static_cast<uint64_t>(core_) * tiling->workspaceBytesPerCore;
        scoresWs_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(mine));
        mine += tiling->scoresWorkspaceBytes;
        probsWs_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(mine));
        mine += tiling->probsWorkspaceBytes;
        valuesWs_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(mine));

        // UB, in the order and sizes of gf_plan::AttentionForwardUbBytes, then the softmax scratch.
        pipe->InitBuffer(scoresQueue_, 2, br_ * bc_ * sizeof(float));
        pipe->InitBuffer(probsQueue_, 1, br_ * bc_ * sizeof(T));
        pipe->InitBuffer(valuesQueue_, 1, br_ * headDim_ * sizeof(float));
        pipe->InitBuffer(outAccBuf_, br_ * headDim_ * sizeof(float));
        pipe->InitBuffer(outQueue_, 1, br_ * headDim_ * sizeof(T));
        pipe->InitBuffer(statsBuf_, 6 * br_ * gf::kFloatsPerBlock * sizeof(float));
        pipe->InitBuffer(keyBuf_, 2 * bc_ * sizeof(float));
        dropoutRows_ = tiling->dropoutRows;
        pipe->InitBuffer(dropoutBuf_, (gf::kDropoutWordVectors * dropoutRows_ + 1) * bc_ * sizeof(int32_t));
        pipe->InitBuffer(scratchBuf_, tiling->scratchBytes);

        // Dropout parameters are tensors (a new seed every step without recompiling); read once by the scalar unit.
        GlobalTensor<int64_t> seedGm;
        seedGm.SetGlobalBuffer(reinterpret_cast<__gm__ int64_t*>(seed));
        GlobalTensor<float> dropGm;
        dropGm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dropProbability));
        const uint64_t seedWord = static_cast<uint64_t>(seedGm.GetValue(0));
        const float drop = dropGm.GetValue(0);
        dropout_ = drop > 0.0f;
        seedLo_ = static_cast<uint32_t>(seedWord);
        seedHi_ = static_cast<uint32_t>(seedWord >> 32);
        threshold_ = dropout_ ? gf::DropThreshold(drop) : 0u;
        keepScale_ = dropout_ ? 1.0f / (1.0f - drop) : 1.0f;
    }

    __aicore__ inline void Process()
    {
        // Tasks are (cell, head, query block) in that order; each vector core takes a contiguous range, so its
        // tasks mostly share one cell and the cell's key scan is reused.
        const uint32_t blocksPerHead = tiling_->queryBlocksPerHead;
        const uint32_t taskCount = tiling_->taskCount;
        const uint32_t cores = tiling_->coreCount;
        const uint32_t first = static_cast<uint32_t>(gf::EvenSplitBegin(taskCount, core_, cores));
        const uint32_t end = static_cast<uint32_t>(gf::EvenSplitBegin(taskCount, core_ + 1, cores));
        uint32_t scannedCell = batch_;
        CellKeys keys;
        for (uint32_t task = first; task < end; ++task) {
            const uint32_t pair = task / blocksPerHead;
            const uint32_t cell = pair / heads_;
            const uint32_t firstRow = (task % blocksPerHead) * br_;
            const uint32_t rows = length_ - firstRow < br_ ? length_ - firstRow : br_;
            if (cell != scannedCell) {
                keys = ScanCell(cell);
                scannedCell = cell;
            }
            if (keys.validCount == 0) {
                WriteEmptyRows(pair, firstRow, rows);
            } else {
                QueryBlock(pair, cell, firstRow, rows, keys);
            }
        }
        scoresMatmul.End();
        valuesMatmul.End();
    }

private:
    // The scalar unit reads the cell's mask row once: count of valid keys and whether they form a prefix.
    __aicore__ inline CellKeys ScanCell(uint32_t cell)
    {
        CellKeys keys;
        uint32_t lastValid = 0;
        const uint64_t rowStart = static_cast<uint64_t>(cell) * length_;
        for (uint32_t j = 0; j < length_; ++j) {
            if (maskGm_.GetValue(rowStart + j) != 0) {
                ++keys.validCount;
                lastValid = j + 1;
            }
        }
        keys.prefix = lastValid == keys.validCount;
        keys.extent = keys.prefix ? keys.validCount : length_;
        return keys;
    }

    __aicore__ inline void QueryBlock(uint32_t pair, uint32_t cell, uint32_t firstRow, uint32_t rows,
                                      const CellKeys& keys)
    {
        const uint64_t headOffset = static_cast<uint64_t>(pair) * length_ * headDim_;
        const uint32_t statRow = br_ * gf::kFloatsPerBlock;
        LocalTensor<float> stats = statsBuf_.Get<float>();
        LocalTensor<float> rowMax = stats;                   // m
        LocalTensor<float> rowSum = stats[statRow];          // l
        LocalTensor<float> prevMax = stats[2 * statRow];     // m before this key block
        LocalTensor<float> prevSum = stats[3 * statRow];     // l before this key block
        LocalTensor<float> rescale = stats[4 * statRow];     // exp(m_prev - m)
        LocalTensor<float> lseRows = stats[5 * statRow];     // LSE_i, contiguous
        LocalTensor<float> outAcc = outAccBuf_.Get<float>();  // O_i
        LocalTensor<uint8_t> scratch = scratchBuf_.Get<uint8_t>();

        // Before the first key block m = kMaskedScore and l = 0 (the CPU's -inf and 0), so the first update gives
        // exp(m_prev - m) = 0; O_i is overwritten rather than rescaled on that block, as on the CPU.
        AscendC::Duplicate(rowMax, gf::kMaskedScore, static_cast<int32_t>(statRow));
        AscendC::Duplicate(rowSum, 0.0f, static_cast<int32_t>(statRow));
        bool firstBlock = true;
        for (uint32_t keyStart = 0; keyStart < keys.extent; keyStart += bc_) {
            const uint32_t width = keys.extent - keyStart < bc_ ? keys.extent - keyStart : bc_;

            // S_ij = s Q_i K_j^T, masked
            ComputeScores(headOffset, firstRow, rows, keyStart, width);
            LocalTensor<float> scores = scoresQueue_.DeQue<float>();
            AscendC::Muls(scores, scores, scale_, static_cast<int32_t>(br_ * bc_));
            AscendC::PipeBarrier<PIPE_V>();
            if (!keys.prefix) {
                LocalTensor<float> bias = LoadKeyBias(cell, keyStart, width);
                gf::ApplyColumnVector<gf::RowOp::kAdd>(scores, scores, bias, br_, bc_);
                AscendC::PipeBarrier<PIPE_V>();
            }
            gf::FillColumnsFrom(scores, br_, bc_, width, gf::kMaskedScore);
            gf::FillRowsFrom(scores, br_, bc_, rows, gf::kMaskedScore);
            AscendC::PipeBarrier<PIPE_V>();

            // Online softmax: m, l updated in place; P_ij = exp(S_ij - m) overwrites S_ij.
            AscendC::Adds(prevMax, rowMax, 0.0f, static_cast<int32_t>(statRow));
            AscendC::Adds(prevSum, rowSum, 0.0f, static_cast<int32_t>(statRow));
            AscendC::PipeBarrier<PIPE_V>();
            const AscendC::SoftMaxShapeInfo shape = {br_, bc_, br_, bc_};
            AscendC::SoftmaxFlashV2<float, true>(scores, rowSum, rowMax, scores, rescale, prevSum, prevMax, scratch,
                                                 tiling_->softmaxTiling, shape);
            AscendC::PipeBarrier<PIPE_V>();

            // The normaliser l keeps the probabilities before dropout; only P V sees the mask.
            if (dropout_) {
                DropProbabilities(scores, pair, firstRow, rows, keyStart);
            }

            // O_i = diag(exp(m_prev - m)) O_i + P_ij V_j
            SendProbabilities(scores);
            scoresQueue_.FreeTensor(scores);
            ComputeValues(headOffset, rows, keyStart, width);
            LocalTensor<float> values = valuesQueue_.DeQue<float>();
            if (firstBlock) {
                AscendC::Adds(outAcc, values, 0.0f, static_cast<int32_t>(br_ * headDim_));
            } else {
                gf::ApplyRowValue<gf::RowOp::kMul>(outAcc, outAcc, rescale, br_, headDim_);
                AscendC::PipeBarrier<PIPE_V>();
                AscendC::Add(outAcc, outAcc, values, static_cast<int32_t>(br_ * headDim_));
            }
            AscendC::PipeBarrier<PIPE_V>();
            valuesQueue_.FreeTensor(values);
            firstBlock = false;
        }

        // O_i = diag(1 / l) O_i;  LSE_i = m + log l
        gf::ApplyRowValue<gf::RowOp::kDiv>(outAcc, outAcc, rowSum, br_, headDim_);
        AscendC::Ln(prevSum, rowSum, static_cast<int32_t>(statRow));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(prevSum, prevSum, rowMax, static_cast<int32_t>(statRow));
        AscendC::PipeBarrier<PIPE_V>();
        gf::FirstLanes(lseRows, prevSum, br_);
        WriteRows(pair, firstRow, rows, outAcc, lseRows);
    }

    __aicore__ inline void ComputeScores(uint64_t headOffset, uint32_t firstRow, uint32_t rows, uint32_t keyStart,
                                         uint32_t width)
    {
        // A = Q rows (row stride d), B = K rows (row stride d) read transposed, C = the Br x Bc workspace tile.
        scoresMatmul.SetOrgShape(length_, length_, headDim_, headDim_, bc_);
        scoresMatmul.SetTensorA(queryGm_[headOffset + static_cast<uint64_t>(firstRow) * headDim_]);
        scoresMatmul.SetTensorB(keyGm_[headOffset + static_cast<uint64_t>(keyStart) * headDim_], true);
        scoresMatmul.SetSingleShape(rows, width, headDim_);
        scoresMatmul.IterateAll(scoresWs_);
        LocalTensor<float> scores = scoresQueue_.AllocTensor<float>();
        AscendC::DataCopy(scores, scoresWs_, br_ * bc_);
        scoresQueue_.EnQue(scores);
    }

    // Additive bias of the key block: 0 for a valid key, kMaskedScore for a masked one (nonzero mask = valid).
    __aicore__ inline LocalTensor<float> LoadKeyBias(uint32_t cell, uint32_t keyStart, uint32_t width)
    {
        LocalTensor<int32_t> maskRow = keyBuf_.Get<int32_t>();
        LocalTensor<float> bias = keyBuf_.Get<float>()[bc_];
        const AscendC::DataCopyExtParams copy = {1, width * static_cast<uint32_t>(sizeof(int32_t)), 0, 0, 0};
        const AscendC::DataCopyPadExtParams<int32_t> noPadding = {false, 0, 0, 0};
        AscendC::DataCopyPad(maskRow, maskGm_[static_cast<uint64_t>(cell) * length_ + keyStart], copy, noPadding);
        gf::WaitFor<HardEvent::MTE2_V>();
        AscendC::Cast(bias, maskRow, AscendC::RoundMode::CAST_NONE, static_cast<int32_t>(bc_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Abs(bias, bias, static_cast<int32_t>(bc_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Mins(bias, bias, 1.0f, static_cast<int32_t>(bc_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Adds(bias, bias, -1.0f, static_cast<int32_t>(bc_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(bias, bias, -gf::kMaskedScore, static_cast<int32_t>(bc_));
        AscendC::PipeBarrier<PIPE_V>();
        return bias;
    }

    // P_ij o= Z_ij on the vector unit (gf_dropout_lanes.h): the key block's column codes once, then the keep mask of
    // dropoutRows_ rows at a time multiplies the probabilities; then the kept ones are scaled by 1 / (1 - p).
    __aicore__ inline void DropProbabilities(const LocalTensor<float>& probs, uint32_t pair, uint32_t firstRow,
                                             uint32_t rows, uint32_t keyStart)
    {
        gf::DropoutTile tile = gf::StartDropoutTile(dropoutBuf_, dropoutRows_, bc_, seedLo_, seedHi_, pair, keyStart);
        for (uint32_t row = 0; row < rows; row += dropoutRows_) {
            const uint32_t chunk = rows - row < dropoutRows_ ? rows - row : dropoutRows_;
            gf::VectorLanes lanes{static_cast<int32_t>(chunk * bc_)};
            const LocalTensor<float> keep =
                gf::KeepMaskLanes(lanes, tile.registers, tile.headKey, firstRow + row, chunk, bc_, threshold_);
            AscendC::Mul(probs[row * bc_], probs[row * bc_], keep, static_cast<int32_t>(chunk * bc_));
            AscendC::PipeBarrier<PIPE_V>();
        }
        AscendC::Muls(probs, probs, keepScale_, static_cast<int32_t>(br_ * bc_));
        AscendC::PipeBarrier<PIPE_V>();
    }

    // P_ij in the input dtype to the workspace, where the cube reads it.
    __aicore__ inline void SendProbabilities(const LocalTensor<float>& probs)
    {
        LocalTensor<T> narrow = probsQueue_.AllocTensor<T>();
        AscendC::Cast(narrow, probs, AscendC::RoundMode::CAST_RINT, static_cast<int32_t>(br_ * bc_));
        probsQueue_.EnQue(narrow);
        narrow = probsQueue_.DeQue<T>();
        AscendC::DataCopy(probsWs_, narrow, br_ * bc_);
        probsQueue_.FreeTensor(narrow);
        gf::WaitFor<HardEvent::MTE3_S>();
    }

    __aicore__ inline void ComputeValues(uint64_t headOffset, uint32_t rows, uint32_t keyStart, uint32_t width)
    {
        // A = P_ij (row stride Bc), B = V rows (row stride d), C = Br x d workspace tile (row stride d).
        valuesMatmul.SetOrgShape(br_, headDim_, bc_, length_, headDim_);
        valuesMatmul.SetTensorA(probsWs_);
        valuesMatmul.SetTensorB(valueGm_[headOffset + static_cast<uint64_t>(keyStart) * headDim_]);
        valuesMatmul.SetSingleShape(rows, headDim_, width);
        valuesMatmul.IterateAll(valuesWs_);
        LocalTensor<float> values = valuesQueue_.AllocTensor<float>();
        AscendC::DataCopy(values, valuesWs_, br_ * headDim_);
        valuesQueue_.EnQue(values);
    }

    __aicore__ inline void WriteRows(uint32_t pair, uint32_t firstRow, uint32_t rows, const LocalTensor<float>& outAcc,
                                     const LocalTensor<float>& lseRows)
    {
        LocalTensor<T> out = outQueue_.AllocTensor<T>();
        AscendC::Cast(out, outAcc, AscendC::RoundMode::CAST_RINT, static_cast<int32_t>(br_ * headDim_));
        outQueue_.EnQue(out);
        out = outQueue_.DeQue<T>();
        const uint64_t rowOffset = static_cast<uint64_t>(pair) * length_ + firstRow;
        AscendC::DataCopy(outGm_[rowOffset * headDim_], out, rows * headDim_);
        outQueue_.FreeTensor(out);
        gf::WaitFor<HardEvent::V_MTE3>();
        const AscendC::DataCopyExtParams copy = {1, rows * static_cast<uint32_t>(sizeof(float)), 0, 0, 0};
        AscendC::DataCopyPad(lseGm_[rowOffset], lseRows, copy);
        gf::WaitFor<HardEvent::MTE3_V>();
    }

    // A cell with no valid key: O = 0 and a finite LSE = 0 that nothing reads.
    __aicore__ inline void WriteEmptyRows(uint32_t pair, uint32_t firstRow, uint32_t rows)
    {
        LocalTensor<float> outAcc = outAccBuf_.Get<float>();
        LocalTensor<float> lseRows = statsBuf_.Get<float>()[5 * br_ * gf::kFloatsPerBlock];
        AscendC::Duplicate(outAcc, 0.0f, static_cast<int32_t>(br_ * headDim_));
        AscendC::Duplicate(lseRows, 0.0f, static_cast<int32_t>(br_));
        AscendC::PipeBarrier<PIPE_V>();
        WriteRows(pair, firstRow, rows, outAcc, lseRows);
    }

    const GfFlashAttentionTilingData* tiling_ = nullptr;
    uint32_t batch_ = 0, heads_ = 0, length_ = 0, headDim_ = 0, br_ = 0, bc_ = 0, core_ = 0;
    float scale_ = 1.0f;
    bool dropout_ = false;
    uint32_t seedLo_ = 0, seedHi_ = 0, threshold_ = 0, dropoutRows_ = 1;
    float keepScale_ = 1.0f;

    GlobalTensor<T> queryGm_, keyGm_, valueGm_, outGm_;
    GlobalTensor<int32_t> maskGm_;
    GlobalTensor<float> lseGm_;
    GlobalTensor<float> scoresWs_, valuesWs_;
    GlobalTensor<T> probsWs_;

    AscendC::TQue<AscendC::QuePosition::VECIN, 2> scoresQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 1> probsQueue_;
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> valuesQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 1> outQueue_;
    AscendC::TBuf<TPosition::VECCALC> outAccBuf_, statsBuf_, keyBuf_, dropoutBuf_, scratchBuf_;
};

}  // namespace

// Inputs and outputs in the order of the OpDef (op_host/gf_flash_attention.cpp); the dtype of `query` selects T.
extern "C" __global__ __aicore__ void gf_flash_attention(GM_ADDR query, GM_ADDR key, GM_ADDR value, GM_ADDR key_mask,
                                                         GM_ADDR seed, GM_ADDR drop_probability, GM_ADDR out,
                                                         GM_ADDR lse, GM_ADDR workspace, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
    GET_TILING_DATA(tilingData, tiling);
    GM_ADDR userWorkspace = AscendC::GetUserWorkspace(workspace);
    AscendC::TPipe pipe;
    FlashAttentionForward<DTYPE_QUERY> op;
    REGIST_MATMUL_OBJ(&pipe, GetSysWorkSpacePtr(), op.scoresMatmul, &tilingData.scoresMatmul, op.valuesMatmul,
                      &tilingData.valuesMatmul);
    op.Init(query, key, value, key_mask, seed, drop_probability, out, lse, userWorkspace, &tilingData, &pipe);
    op.Process();
}
