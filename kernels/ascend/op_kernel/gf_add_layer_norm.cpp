// GfAddLayerNorm: the post-LN residual step y = LayerNorm(x + residual) on the vector unit, the maths of
// kernels/cpu/add_layer_norm.cc (layer_norm_row): per row of width H, in fp32 whatever the input dtype,
//   z = x + r;  mean = sum(z) / H;  var = sum((z - mean)^2) / H;  rstd = 1 / sqrt(var + eps);
//   y = gamma (z - mean) rstd + beta,  keeping mean and rstd for the backward.
// Two passes over the row (mean first, then the centred squares) as on the CPU: no E[z^2] - E[z]^2 cancellation,
// which eps = 1e-12 would not hide.
//
// Rows are split into tiles of R rows (gf_plan::PlanLayerNorm) and the tiles into contiguous ranges, one per
// vector core; CopyIn / Compute / CopyOut per tile with double-buffered queues, so the copy of tile t+1 overlaps
// the arithmetic of tile t (single-buffered only for rows too wide for two buffers in UB).
#include "kernel_operator.h"

#include "gf_task_split.h"
#include "gf_tile_ops.h"

namespace {

using AscendC::GlobalTensor;
using AscendC::HardEvent;
using AscendC::LocalTensor;
using AscendC::TPosition;

template <typename T>
class AddLayerNormForward {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR residual, GM_ADDR weight, GM_ADDR bias, GM_ADDR eps, GM_ADDR y,
                                GM_ADDR mean, GM_ADDR rstd, const GfAddLayerNormTilingData* tiling,
                                AscendC::TPipe* pipe)
    {
        rowCount_ = tiling->rowCount;
        hidden_ = tiling->hiddenSize;
        tileRows_ = tiling->rowsPerTile;
        rowSlots_ = (tileRows_ + gf::kFloatsPerBlock - 1) / gf::kFloatsPerBlock * gf::kFloatsPerBlock;
        const uint32_t tiles = tiling->tileCount;
        const uint32_t core = AscendC::GetBlockIdx();
        firstTile_ = static_cast<uint32_t>(gf::EvenSplitBegin(tiles, core, tiling->coreCount));
        endTile_ = static_cast<uint32_t>(gf::EvenSplitBegin(tiles, core + 1, tiling->coreCount));

        xGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x));
        residualGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(residual));
        yGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(y));
        meanGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(mean));
        rstdGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(rstd));
        GlobalTensor<float> epsGm;
        epsGm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(eps));
        eps_ = epsGm.GetValue(0);

        // UB in the order of gf_plan::LayerNormForwardUbBytes; per-row scalars get a multiple of 8 slots.
        const uint32_t tile = tileRows_ * hidden_;
        const uint32_t buffers = tiling->bufferCount;
        pipe->InitBuffer(inQueue_, buffers, 2 * tile * sizeof(T));
        pipe->InitBuffer(outQueue_, buffers, tile * sizeof(T));
        pipe->InitBuffer(statsQueue_, buffers, 2 * rowSlots_ * sizeof(float));
        pipe->InitBuffer(workBuf_, 2 * tile * sizeof(float));
        pipe->InitBuffer(foldBuf_, tileRows_ * gf::kFloatLanes * sizeof(float));
        pipe->InitBuffer(rowBuf_, 3 * rowSlots_ * gf::kFloatsPerBlock * sizeof(float));
        pipe->InitBuffer(paramBuf_, 2 * hidden_ * sizeof(float));

        // gamma and beta (fp32) stay in UB for the whole launch.
        LocalTensor<float> params = paramBuf_.Get<float>();
        GlobalTensor<float> weightGm, biasGm;
        weightGm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(weight));
        biasGm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(bias));
        AscendC::DataCopy(params, weightGm, hidden_);
        AscendC::DataCopy(params[hidden_], biasGm, hidden_);
        gf::WaitFor<HardEvent::MTE2_V>();
        LocalTensor<float> ones = rowBuf_.Get<float>()[2 * rowSlots_ * gf::kFloatsPerBlock];
        AscendC::Duplicate(ones, 1.0f, static_cast<int32_t>(rowSlots_));
    }

    __aicore__ inline void Process()
    {
        for (uint32_t t = firstTile_; t < endTile_; ++t) {
            const uint32_t firstRow = t * tileRows_;
            const uint32_t rows = rowCount_ - firstRow < tileRows_ ? rowCount_ - firstRow : tileRows_;
            CopyIn(firstRow, rows);
            Compute(rows);
            CopyOut(firstRow, rows);
        }
    }

private:
    __aicore__ inline void CopyIn(uint32_t firstRow, uint32_t rows)
    {
        LocalTensor<T> in = inQueue_.AllocTensor<T>();
        const uint64_t offset = static_cast<uint64_t>(firstRow) * hidden_;
        AscendC::DataCopy(in, xGm_[offset], rows * hidden_);
        AscendC::DataCopy(in[tileRows_ * hidden_], residualGm_[offset], rows * hidden_);
        inQueue_.EnQue(in);
    }

    __aicore__ inline void Compute(uint32_t rows)
    {
        const uint32_t tile = tileRows_ * hidden_;
        LocalTensor<T> in = inQueue_.DeQue<T>();
        LocalTensor<float> z = workBuf_.Get<float>();
        LocalTensor<float> squares = z[tile];
        LocalTensor<float> fold = foldBuf_.Get<float>();
        LocalTensor<float> rowValues = rowBuf_.Get<float>();
        LocalTensor<float> meanBroadcast = rowValues;
        LocalTensor<float> rstdBroadcast = rowValues[rowSlots_ * gf::kFloatsPerBlock];
        LocalTensor<float> ones = rowValues[2 * rowSlots_ * gf::kFloatsPerBlock];
        LocalTensor<float> params = paramBuf_.Get<float>();
        const float inverseWidth = 1.0f / static_cast<float>(hidden_);

        // z = x + r in fp32; rows past a partial tile are set to 0 so that everything stays finite. The barrier
        // first: the previous tile's FromFloat may still be reading z (same pipe, pipelined).
        AscendC::PipeBarrier<PIPE_V>();
        ToFloat(z, in, tile);
        ToFloat(squares, in[tile], tile);
        inQueue_.FreeTensor(in);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(z, z, squares, static_cast<int32_t>(tile));
        AscendC::PipeBarrier<PIPE_V>();
        gf::FillRowsFrom(z, tileRows_, hidden_, rows, 0.0f);
        AscendC::PipeBarrier<PIPE_V>();

        LocalTensor<float> stats = statsQueue_.AllocTensor<float>();
        LocalTensor<float> mean = stats;
        LocalTensor<float> rstd = stats[rowSlots_];

        // mean, then z - mean
        gf::RowSums(mean, z, fold, tileRows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(mean, mean, inverseWidth, static_cast<int32_t>(rowSlots_));
        AscendC::PipeBarrier<PIPE_V>();
        gf::BroadcastRows(meanBroadcast, mean, tileRows_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kSub>(z, z, meanBroadcast, tileRows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();

        // rstd = 1 / sqrt(mean((z - mean)^2) + eps)
        AscendC::Mul(squares, z, z, static_cast<int32_t>(tile));
        AscendC::PipeBarrier<PIPE_V>();
        gf::RowSums(rstd, squares, fold, tileRows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(rstd, rstd, inverseWidth, static_cast<int32_t>(rowSlots_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Adds(rstd, rstd, eps_, static_cast<int32_t>(rowSlots_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Sqrt(rstd, rstd, static_cast<int32_t>(rowSlots_));
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Div(rstd, ones, rstd, static_cast<int32_t>(rowSlots_));
        AscendC::PipeBarrier<PIPE_V>();

        // y = gamma (z - mean) rstd + beta
        gf::BroadcastRows(rstdBroadcast, rstd, tileRows_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kMul>(z, z, rstdBroadcast, tileRows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyColumnVector<gf::RowOp::kMul>(z, z, params, tileRows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyColumnVector<gf::RowOp::kAdd>(z, z, params[hidden_], tileRows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        statsQueue_.EnQue(stats);

        LocalTensor<T> y = outQueue_.AllocTensor<T>();
        FromFloat(y, z, tile);
        outQueue_.EnQue(y);
    }

    __aicore__ inline void CopyOut(uint32_t firstRow, uint32_t rows)
    {
        LocalTensor<T> y = outQueue_.DeQue<T>();
        AscendC::DataCopy(yGm_[static_cast<uint64_t>(firstRow) * hidden_], y, rows * hidden_);
        outQueue_.FreeTensor(y);
        LocalTensor<float> stats = statsQueue_.DeQue<float>();
        const AscendC::DataCopyExtParams copy = {1, rows * static_cast<uint32_t>(sizeof(float)), 0, 0, 0};
        AscendC::DataCopyPad(meanGm_[firstRow], stats, copy);
        AscendC::DataCopyPad(rstdGm_[firstRow], stats[rowSlots_], copy);
        statsQueue_.FreeTensor(stats);
    }

    __aicore__ inline void ToFloat(const LocalTensor<float>& dst, const LocalTensor<T>& src, uint32_t count)
    {
        if constexpr (AscendC::IsSameType<T, float>::value) {
            AscendC::Adds(dst, src, 0.0f, static_cast<int32_t>(count));
        } else {
            AscendC::Cast(dst, src, AscendC::RoundMode::CAST_NONE, static_cast<int32_t>(count));
        }
    }

    __aicore__ inline void FromFloat(const LocalTensor<T>& dst, const LocalTensor<float>& src, uint32_t count)
    {
        if constexpr (AscendC::IsSameType<T, float>::value) {
            AscendC::Adds(dst, src, 0.0f, static_cast<int32_t>(count));
        } else {
            AscendC::Cast(dst, src, AscendC::RoundMode::CAST_RINT, static_cast<int32_t>(count));
        }
    }

    uint32_t rowCount_ = 0, hidden_ = 0, tileRows_ = 0, rowSlots_ = 0, firstTile_ = 0, endTile_ = 0;
    float eps_ = 0.0f;
    GlobalTensor<T> xGm_, residualGm_, yGm_;
    GlobalTensor<float> meanGm_, rstdGm_;
    AscendC::TQue<AscendC::QuePosition::VECIN, 2> inQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 2> outQueue_, statsQueue_;
    AscendC::TBuf<TPosition::VECCALC> workBuf_, foldBuf_, rowBuf_, paramBuf_;
};

}  // namespace

extern "C" __global__ __aicore__ void gf_add_layer_norm(GM_ADDR x, GM_ADDR residual, GM_ADDR weight, GM_ADDR bias,
                                                        GM_ADDR eps, GM_ADDR y, GM_ADDR mean, GM_ADDR rstd,
                                                        GM_ADDR workspace, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    GET_TILING_DATA(tilingData, tiling);
    AscendC::TPipe pipe;
    AddLayerNormForward<DTYPE_X> op;
    op.Init(x, residual, weight, bias, eps, y, mean, rstd, &tilingData, &pipe);
    op.Process();
}
