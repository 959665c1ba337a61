// GfAddLayerNormGrad: backward of y = LayerNorm(x + residual), the maths of kernels/cpu/add_layer_norm.cc
// (layer_norm_row_backward), per row of width H in fp32:
//   zhat = (x + r - mean) rstd;  g = dy gamma;
//   dx = dresidual = rstd (g - mean(g) - zhat mean(g zhat)) + dmean / H - drstd rstd^2 zhat / H
//   dgamma = sum over rows of dy zhat;  dbeta = sum over rows of dy
// (dmean, drstd: gradients reaching the saved statistics, 0 unless a caller uses them.)
//
// Two phases, no synchronisation between cores: row tiles for dx (each row is independent), then column slices
// of 16 features for dgamma and dbeta, each slice summed over all rows by one core, so every sum has one owner
// and one order (the CPU kernel sums its partials in a fixed order for the same reason). The column phase reads
// x, residual and dy a second time rather than passing partial sums between cores.
#include "kernel_operator.h"

#include "gf_task_split.h"
#include "gf_tile_ops.h"

namespace {

using AscendC::GlobalTensor;
using AscendC::HardEvent;
using AscendC::LocalTensor;
using AscendC::TPosition;

template <typename T>
class AddLayerNormBackward {
public:
    __aicore__ inline void Init(GM_ADDR dy, GM_ADDR x, GM_ADDR residual, GM_ADDR weight, GM_ADDR mean, GM_ADDR rstd,
                                GM_ADDR dMean, GM_ADDR dRstd, GM_ADDR dx, GM_ADDR dWeight, GM_ADDR dBias,
                                const GfAddLayerNormGradTilingData* tiling, AscendC::TPipe* pipe)
    {
        tiling_ = tiling;
        pipe_ = pipe;
        rowCount_ = tiling->rowCount;
        hidden_ = tiling->hiddenSize;
        core_ = AscendC::GetBlockIdx();
        dyGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(dy));
        xGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x));
        residualGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(residual));
        weightGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(weight));
        meanGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(mean));
        rstdGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(rstd));
        dMeanGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dMean));
        dRstdGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dRstd));
        dxGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(dx));
        dWeightGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dWeight));
        dBiasGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dBias));
    }

    __aicore__ inline void Process()
    {
        RowPhase();
        // TPipe::Reset frees the buffers but orders no pipe: the column phase's first copies and vector writes
        // reuse UB that the row phase's last instructions may still be reading or writing.
        AscendC::PipeBarrier<PIPE_ALL>();
        pipe_->Reset();
        ColumnPhase();
    }

private:
    // ---- dx: row tiles -----------------------------------------------------------------------------------------

    __aicore__ inline void RowPhase()
    {
        rows_ = tiling_->rowsPerTile;
        slots_ = (rows_ + gf::kFloatsPerBlock - 1) / gf::kFloatsPerBlock * gf::kFloatsPerBlock;
        const uint32_t tile = rows_ * hidden_;
        const uint32_t buffers = tiling_->bufferCount;
        // UB in the order of gf_plan::LayerNormBackwardUbBytes; per-row scalars get a multiple of 8 slots.
        pipe_->InitBuffer(inQueue_, buffers, 3 * tile * sizeof(T));
        pipe_->InitBuffer(outQueue_, buffers, tile * sizeof(T));
        pipe_->InitBuffer(workBuf_, 3 * tile * sizeof(float));
        pipe_->InitBuffer(foldBuf_, rows_ * gf::kFloatLanes * sizeof(float));
        pipe_->InitBuffer(statsQueue_, buffers, 4 * slots_ * sizeof(float));
        pipe_->InitBuffer(rowVectorBuf_, 2 * slots_ * sizeof(float));
        pipe_->InitBuffer(broadcastBuf_, 3 * slots_ * gf::kFloatsPerBlock * sizeof(float));
        pipe_->InitBuffer(gammaBuf_, hidden_ * sizeof(float));

        LocalTensor<float> gamma = gammaBuf_.Get<float>();
        AscendC::DataCopy(gamma, weightGm_, hidden_);
        gf::WaitFor<HardEvent::MTE2_V>();

        const uint32_t tiles = tiling_->tileCount;
        const uint32_t first = static_cast<uint32_t>(gf::EvenSplitBegin(tiles, core_, tiling_->coreCount));
        const uint32_t end = static_cast<uint32_t>(gf::EvenSplitBegin(tiles, core_ + 1, tiling_->coreCount));
        for (uint32_t t = first; t < end; ++t) {
            const uint32_t firstRow = t * rows_;
            const uint32_t rows = rowCount_ - firstRow < rows_ ? rowCount_ - firstRow : rows_;
            RowCopyIn(firstRow, rows);
            RowCompute(rows);
            RowCopyOut(firstRow, rows);
        }
    }

    __aicore__ inline void RowCopyIn(uint32_t firstRow, uint32_t rows)
    {
        const uint32_t tile = rows_ * hidden_;
        const uint64_t offset = static_cast<uint64_t>(firstRow) * hidden_;
        LocalTensor<T> in = inQueue_.AllocTensor<T>();
        AscendC::DataCopy(in, dyGm_[offset], rows * hidden_);
        AscendC::DataCopy(in[tile], xGm_[offset], rows * hidden_);
        AscendC::DataCopy(in[2 * tile], residualGm_[offset], rows * hidden_);
        inQueue_.EnQue(in);

        // Statistics of rows past a partial tile read as 0, so those rows stay finite.
        LocalTensor<float> stats = statsQueue_.AllocTensor<float>();
        AscendC::Duplicate(stats, 0.0f, static_cast<int32_t>(4 * slots_));
        gf::WaitFor<HardEvent::V_MTE2>();
        const AscendC::DataCopyExtParams copy = {1, rows * static_cast<uint32_t>(sizeof(float)), 0, 0, 0};
        const AscendC::DataCopyPadExtParams<float> noPadding = {false, 0, 0, 0.0f};
        AscendC::DataCopyPad(stats, meanGm_[firstRow], copy, noPadding);
        AscendC::DataCopyPad(stats[slots_], rstdGm_[firstRow], copy, noPadding);
        AscendC::DataCopyPad(stats[2 * slots_], dMeanGm_[firstRow], copy, noPadding);
        AscendC::DataCopyPad(stats[3 * slots_], dRstdGm_[firstRow], copy, noPadding);
        statsQueue_.EnQue(stats);
    }

    __aicore__ inline void RowCompute(uint32_t rows)
    {
        const uint32_t tile = rows_ * hidden_;
        const float inverseWidth = 1.0f / static_cast<float>(hidden_);
        LocalTensor<T> in = inQueue_.DeQue<T>();
        LocalTensor<float> stats = statsQueue_.DeQue<float>();
        LocalTensor<float> mean = stats;
        LocalTensor<float> rstd = stats[slots_];
        LocalTensor<float> dMean = stats[2 * slots_];
        LocalTensor<float> dRstd = stats[3 * slots_];
        LocalTensor<float> work = workBuf_.Get<float>();
        LocalTensor<float> zhat = work;
        LocalTensor<float> g = work[tile];
        LocalTensor<float> product = work[2 * tile];
        LocalTensor<float> fold = foldBuf_.Get<float>();
        LocalTensor<float> rowVectors = rowVectorBuf_.Get<float>();
        LocalTensor<float> sumG = rowVectors;
        LocalTensor<float> sumGZhat = rowVectors[slots_];
        LocalTensor<float> broadcasts = broadcastBuf_.Get<float>();
        LocalTensor<float> meanOrCoefficient = broadcasts;
        LocalTensor<float> rstdBroadcast = broadcasts[slots_ * gf::kFloatsPerBlock];
        LocalTensor<float> constantBroadcast = broadcasts[2 * slots_ * gf::kFloatsPerBlock];
        LocalTensor<float> gamma = gammaBuf_.Get<float>();

        // zhat = (x + r - mean) rstd. (The previous tile's FromFloat, which reads g, is ordered before the writes
        // below by RowCopyIn's V -> MTE2 wait and the statistics queue's MTE2 -> V hand-off.)
        ToFloat(zhat, in[tile], tile);
        ToFloat(product, in[2 * tile], tile);
        ToFloat(g, in, tile);
        inQueue_.FreeTensor(in);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(zhat, zhat, product, static_cast<int32_t>(tile));
        AscendC::PipeBarrier<PIPE_V>();
        gf::BroadcastRows(meanOrCoefficient, mean, rows_);
        gf::BroadcastRows(rstdBroadcast, rstd, rows_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kSub>(zhat, zhat, meanOrCoefficient, rows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kMul>(zhat, zhat, rstdBroadcast, rows_, hidden_);
        // g = dy gamma (rows past a partial tile: dy = 0 there)
        gf::FillRowsFrom(g, rows_, hidden_, rows, 0.0f);
        AscendC::PipeBarrier<PIPE_V>();
        gf::FillRowsFrom(zhat, rows_, hidden_, rows, 0.0f);
        gf::ApplyColumnVector<gf::RowOp::kMul>(g, g, gamma, rows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();

        // mean(g), mean(g zhat)
        AscendC::Mul(product, g, zhat, static_cast<int32_t>(tile));
        gf::RowSums(sumG, g, fold, rows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::RowSums(sumGZhat, product, fold, rows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();

        // zhat coefficient: -(rstd sum(g zhat) + drstd rstd^2) / H   (into sumGZhat)
        // constant term:    (dmean - rstd sum(g)) / H              (into sumG)
        const int32_t count = static_cast<int32_t>(slots_);
        AscendC::Mul(sumGZhat, sumGZhat, rstd, count);
        AscendC::Mul(dRstd, dRstd, rstd, count);
        AscendC::Mul(sumG, sumG, rstd, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Mul(dRstd, dRstd, rstd, count);
        AscendC::Sub(sumG, dMean, sumG, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(sumGZhat, sumGZhat, dRstd, count);
        AscendC::Muls(sumG, sumG, inverseWidth, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(sumGZhat, sumGZhat, -inverseWidth, count);
        AscendC::PipeBarrier<PIPE_V>();
        gf::BroadcastRows(meanOrCoefficient, sumGZhat, rows_);
        gf::BroadcastRows(constantBroadcast, sumG, rows_);
        AscendC::PipeBarrier<PIPE_V>();

        // dx = rstd g + coefficient zhat + constant
        gf::ApplyRowValue<gf::RowOp::kMul>(g, g, rstdBroadcast, rows_, hidden_);
        gf::ApplyRowValue<gf::RowOp::kMul>(product, zhat, meanOrCoefficient, rows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(g, g, product, static_cast<int32_t>(tile));
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kAdd>(g, g, constantBroadcast, rows_, hidden_);
        AscendC::PipeBarrier<PIPE_V>();
        statsQueue_.FreeTensor(stats);

        LocalTensor<T> dx = outQueue_.AllocTensor<T>();
        FromFloat(dx, g, tile);
        outQueue_.EnQue(dx);
    }

    __aicore__ inline void RowCopyOut(uint32_t firstRow, uint32_t rows)
    {
        LocalTensor<T> dx = outQueue_.DeQue<T>();
        AscendC::DataCopy(dxGm_[static_cast<uint64_t>(firstRow) * hidden_], dx, rows * hidden_);
        outQueue_.FreeTensor(dx);
    }

    // ---- dgamma, dbeta: column slices ------------------------------------------------------------------------

    __aicore__ inline void ColumnPhase()
    {
        width_ = tiling_->columnSlice;
        columnRows_ = tiling_->rowsPerColumnTile;
        const uint32_t tile = columnRows_ * width_;
        // UB in the order of gf_plan::LayerNormColumnUbBytes.
        pipe_->InitBuffer(sliceQueue_, 2, 3 * tile * sizeof(T));
        pipe_->InitBuffer(sliceWorkBuf_, 2 * tile * sizeof(float));
        pipe_->InitBuffer(sliceStatsQueue_, 1, 2 * columnRows_ * sizeof(float));
        pipe_->InitBuffer(sliceBroadcastBuf_, 2 * columnRows_ * gf::kFloatsPerBlock * sizeof(float));
        pipe_->InitBuffer(accumulatorBuf_, 2 * width_ * sizeof(float));
        pipe_->InitBuffer(sumsOutQueue_, 1, 2 * width_ * sizeof(float));

        const uint32_t slices = tiling_->sliceCount;
        const uint32_t first = static_cast<uint32_t>(gf::EvenSplitBegin(slices, core_, tiling_->coreCount));
        const uint32_t end = static_cast<uint32_t>(gf::EvenSplitBegin(slices, core_ + 1, tiling_->coreCount));
        for (uint32_t slice = first; slice < end; ++slice) {
            const uint32_t firstColumn = slice * width_;
            LocalTensor<float> accumulator = accumulatorBuf_.Get<float>();
            AscendC::Duplicate(accumulator, 0.0f, static_cast<int32_t>(2 * width_));
            AscendC::PipeBarrier<PIPE_V>();
            for (uint32_t firstRow = 0; firstRow < rowCount_; firstRow += columnRows_) {
                const uint32_t rows = rowCount_ - firstRow < columnRows_ ? rowCount_ - firstRow : columnRows_;
                SliceCopyIn(firstRow, rows, firstColumn);
                SliceCompute(rows);
            }
            SliceCopyOut(firstColumn);
        }
    }

    __aicore__ inline void SliceCopyIn(uint32_t firstRow, uint32_t rows, uint32_t firstColumn)
    {
        const uint32_t tile = columnRows_ * width_;
        const uint64_t offset = static_cast<uint64_t>(firstRow) * hidden_ + firstColumn;
        // `rows` blocks of `width` elements, `hidden` apart in GM, packed one after the other in UB.
        const AscendC::DataCopyExtParams slice = {static_cast<uint16_t>(rows),
                                                  width_ * static_cast<uint32_t>(sizeof(T)),
                                                  (hidden_ - width_) * static_cast<uint32_t>(sizeof(T)), 0, 0};
        LocalTensor<T> in = sliceQueue_.AllocTensor<T>();
        CopySlice(in, dyGm_[offset], slice);
        CopySlice(in[tile], xGm_[offset], slice);
        CopySlice(in[2 * tile], residualGm_[offset], slice);
        sliceQueue_.EnQue(in);

        LocalTensor<float> stats = sliceStatsQueue_.AllocTensor<float>();
        const AscendC::DataCopyExtParams copy = {1, rows * static_cast<uint32_t>(sizeof(float)), 0, 0, 0};
        const AscendC::DataCopyPadExtParams<float> noFloatPadding = {false, 0, 0, 0.0f};
        AscendC::DataCopyPad(stats, meanGm_[firstRow], copy, noFloatPadding);
        AscendC::DataCopyPad(stats[columnRows_], rstdGm_[firstRow], copy, noFloatPadding);
        sliceStatsQueue_.EnQue(stats);
    }

    // DataCopyPad of 16-bit data as uint16 (the same bytes), since not every CANN release lists bf16 for it.
    __aicore__ inline void CopySlice(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                                     const AscendC::DataCopyExtParams& params)
    {
        if constexpr (sizeof(T) == 2) {
            // GetPhyAddr() returns a pointer to const; GetPhyAddr(offset) the writable one SetGlobalBuffer takes.
            GlobalTensor<uint16_t> bits;
            bits.SetGlobalBuffer(reinterpret_cast<__gm__ uint16_t*>(src.GetPhyAddr(0)));
            const AscendC::DataCopyPadExtParams<uint16_t> noPadding = {false, 0, 0, 0};
            AscendC::DataCopyPad(dst.template ReinterpretCast<uint16_t>(), bits, params, noPadding);
        } else {
            const AscendC::DataCopyPadExtParams<T> noPadding = {false, 0, 0, 0};
            AscendC::DataCopyPad(dst, src, params, noPadding);
        }
    }

    __aicore__ inline void SliceCompute(uint32_t rows)
    {
        const uint32_t tile = columnRows_ * width_;
        LocalTensor<T> in = sliceQueue_.DeQue<T>();
        LocalTensor<float> stats = sliceStatsQueue_.DeQue<float>();
        LocalTensor<float> work = sliceWorkBuf_.Get<float>();
        LocalTensor<float> zhat = work;
        LocalTensor<float> dy = work[tile];
        LocalTensor<float> broadcasts = sliceBroadcastBuf_.Get<float>();
        LocalTensor<float> meanBroadcast = broadcasts;
        LocalTensor<float> rstdBroadcast = broadcasts[columnRows_ * gf::kFloatsPerBlock];
        LocalTensor<float> accumulator = accumulatorBuf_.Get<float>();

        ToFloat(zhat, in[tile], tile);
        ToFloat(dy, in[2 * tile], tile);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Add(zhat, zhat, dy, static_cast<int32_t>(tile));
        // dy is overwritten next while the Add may still be reading it (same pipe, pipelined)
        AscendC::PipeBarrier<PIPE_V>();
        ToFloat(dy, in, tile);
        sliceQueue_.FreeTensor(in);
        gf::BroadcastRows(meanBroadcast, stats, columnRows_);
        gf::BroadcastRows(rstdBroadcast, stats[columnRows_], columnRows_);
        sliceStatsQueue_.FreeTensor(stats);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kSub>(zhat, zhat, meanBroadcast, columnRows_, width_);
        AscendC::PipeBarrier<PIPE_V>();
        gf::ApplyRowValue<gf::RowOp::kMul>(zhat, zhat, rstdBroadcast, columnRows_, width_);
        AscendC::PipeBarrier<PIPE_V>();
        // Rows past a partial tile contribute nothing (and their stale statistics nothing non-finite).
        gf::FillRowsFrom(zhat, columnRows_, width_, rows, 0.0f);
        gf::FillRowsFrom(dy, columnRows_, width_, rows, 0.0f);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Mul(zhat, zhat, dy, static_cast<int32_t>(tile));  // dy o zhat
        AscendC::PipeBarrier<PIPE_V>();
        // Column sums by halving the rows (columnRows_ is a power of two): dgamma from dy o zhat, dbeta from dy.
        for (uint32_t half = columnRows_ / 2; half >= 1; half /= 2) {
            AscendC::Add(zhat, zhat, zhat[half * width_], static_cast<int32_t>(half * width_));
            AscendC::Add(dy, dy, dy[half * width_], static_cast<int32_t>(half * width_));
            AscendC::PipeBarrier<PIPE_V>();
        }
        AscendC::Add(accumulator, accumulator, zhat, static_cast<int32_t>(width_));
        AscendC::Add(accumulator[width_], accumulator[width_], dy, static_cast<int32_t>(width_));
        AscendC::PipeBarrier<PIPE_V>();
    }

    __aicore__ inline void SliceCopyOut(uint32_t firstColumn)
    {
        LocalTensor<float> accumulator = accumulatorBuf_.Get<float>();
        LocalTensor<float> sums = sumsOutQueue_.AllocTensor<float>();
        AscendC::Adds(sums, accumulator, 0.0f, static_cast<int32_t>(2 * width_));
        // the next slice's Duplicate overwrites the accumulator this Adds reads (same pipe, pipelined)
        AscendC::PipeBarrier<PIPE_V>();
        sumsOutQueue_.EnQue(sums);
        sums = sumsOutQueue_.DeQue<float>();
        AscendC::DataCopy(dWeightGm_[firstColumn], sums, width_);
        AscendC::DataCopy(dBiasGm_[firstColumn], sums[width_], width_);
        sumsOutQueue_.FreeTensor(sums);
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

    const GfAddLayerNormGradTilingData* tiling_ = nullptr;
    AscendC::TPipe* pipe_ = nullptr;
    uint32_t rowCount_ = 0, hidden_ = 0, core_ = 0, rows_ = 0, slots_ = 0, width_ = 0, columnRows_ = 0;
    GlobalTensor<T> dyGm_, xGm_, residualGm_, dxGm_;
    GlobalTensor<float> weightGm_, meanGm_, rstdGm_, dMeanGm_, dRstdGm_, dWeightGm_, dBiasGm_;

    AscendC::TQue<AscendC::QuePosition::VECIN, 2> inQueue_, statsQueue_, sliceQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 2> outQueue_;
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> sliceStatsQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 1> sumsOutQueue_;
    AscendC::TBuf<TPosition::VECCALC> workBuf_, foldBuf_, rowVectorBuf_, broadcastBuf_, gammaBuf_;
    AscendC::TBuf<TPosition::VECCALC> sliceWorkBuf_, sliceBroadcastBuf_, accumulatorBuf_;
};

}  // namespace

extern "C" __global__ __aicore__ void gf_add_layer_norm_grad(GM_ADDR dy, GM_ADDR x, GM_ADDR residual, GM_ADDR weight,
                                                             GM_ADDR mean, GM_ADDR rstd, GM_ADDR d_mean,
                                                             GM_ADDR d_rstd, GM_ADDR dx, GM_ADDR d_weight,
                                                             GM_ADDR d_bias, GM_ADDR workspace, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    GET_TILING_DATA(tilingData, tiling);
    AscendC::TPipe pipe;
    AddLayerNormBackward<DTYPE_X> op;
    op.Init(dy, x, residual, weight, mean, rstd, d_mean, d_rstd, dx, d_weight, d_bias, &tilingData, &pipe);
    op.Process();
}
