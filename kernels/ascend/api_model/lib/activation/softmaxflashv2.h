// SoftmaxFlashV2 (doc: 高阶API/激活函数/SoftMax接口/SoftmaxFlashV2.md), the ND, same-dtype form with a shared
// temporary buffer, as the page's formula states it per row of [srcM, srcK]:
//   isUpdate = false: max = rowmax(x); dst = exp(x - max); sum = rowsum(dst)
//   isUpdate = true:  max = max(inMax, rowmax(x)); dst = exp(x - max); expMax = exp(inMax - max);
//                     sum = expMax * inSum + rowsum(dst)
// max, sum, expMax (and inMax, inSum) in the [srcM, 32 bytes] broadcast layout ("[m, 1] 扩展成 [m, 8]" for fp32).
// In the model it is one vector-pipe operation: it reads its inputs and writes its outputs after whatever orders
// the vector pipe, and the kernel needs a PipeBarrier<PIPE_V> before reading what it wrote.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "kernel_operator.h"
#include "tiling/tiling_api.h"

namespace AscendC {

struct SoftMaxShapeInfo {
    uint32_t srcM = 0, srcK = 0, oriSrcM = 0, oriSrcK = 0;
};

template <typename T, bool isUpdate = false, bool isReuseSource = false, bool isBasicBlock = false,
          bool isDataFormatNZ = false>
inline void SoftmaxFlashV2(const LocalTensor<T>& dst, const LocalTensor<T>& expSum, const LocalTensor<T>& maxOut,
                           const LocalTensor<T>& src, const LocalTensor<T>& expMax, const LocalTensor<T>& inExpSum,
                           const LocalTensor<T>& inMax, const LocalTensor<uint8_t>& sharedTmpBuffer,
                           const SoftMaxTiling& tiling, const SoftMaxShapeInfo& shape = {}, Where where = GFM_HERE)
{
    static_assert(std::is_same<T, float>::value, "the model serves the fp32 form");
    static_assert(!isDataFormatNZ, "the model serves ND");
    (void)tiling;
    const uint32_t m = shape.srcM, k = shape.srcK;
    GFM_CHECK(m > 0 && k > 0 && (k * sizeof(T)) % 32 == 0, where, "SoftmaxFlashV2: srcK * sizeof(T) not 32-byte aligned");
    GFM_CHECK(shape.oriSrcK == k && shape.oriSrcM == m, where, "SoftmaxFlashV2: padded shapes are not modelled");
    GFM_CHECK(sharedTmpBuffer.GetSize() > 0, where, "SoftmaxFlashV2: empty temporary buffer");
    constexpr uint32_t per = 32 / sizeof(T);
    // The page lets src and dst, maxTensor and inMaxTensor, expSumTensor and inExpSumTensor share space; any other
    // overlap (the temporary buffer included) is outside the API's contract, although reading every input before
    // writing, as the model does, would compute it right.
    struct Span {
        const char* name;
        uint32_t begin, end;
    };
    const auto span = [](const char* name, const auto& t, uint32_t bytes) {
        return Span{name, t.addr_, t.addr_ + bytes};
    };
    const uint32_t tileBytes = m * k * sizeof(T), rowBytes = m * 32;
    std::vector<Span> spans = {span("dst", dst, tileBytes), span("src", src, tileBytes),
                               span("maxTensor", maxOut, rowBytes), span("expSumTensor", expSum, rowBytes),
                               span("sharedTmpBuffer", sharedTmpBuffer, sharedTmpBuffer.GetSize())};
    if (isUpdate) {
        spans.push_back(span("expMaxTensor", expMax, rowBytes));
        spans.push_back(span("inMaxTensor", inMax, rowBytes));
        spans.push_back(span("inExpSumTensor", inExpSum, rowBytes));
    }
    const auto shareable = [](const std::string& a, const std::string& b) {
        const auto pair = [&](const char* x, const char* y) { return (a == x && b == y) || (a == y && b == x); };
        return pair("dst", "src") || pair("maxTensor", "inMaxTensor") || pair("expSumTensor", "inExpSumTensor");
    };
    for (size_t i = 0; i < spans.size(); ++i) {
        for (size_t j = i + 1; j < spans.size(); ++j) {
            const bool overlap = spans[i].begin < spans[j].end && spans[j].begin < spans[i].end;
            GFM_CHECK(!overlap || shareable(spans[i].name, spans[j].name), where,
                      std::string("SoftmaxFlashV2: ") + spans[i].name + " and " + spans[j].name +
                          " overlap (only src/dst, max/inMax and expSum/inExpSum may share space)");
        }
    }
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto tile = model::Contiguous(static_cast<int64_t>(m) * k, where);
    const auto rows = model::Contiguous(static_cast<int64_t>(m) * per, where);
    const auto bs = model::Operand(src, tile, gfm::kPipeV, s, false, where, "SoftmaxFlashV2 src");
    std::vector<uint32_t> bMax, bSum;
    if (isUpdate) {
        bMax = model::Operand(inMax, rows, gfm::kPipeV, s, false, where, "SoftmaxFlashV2 inMax");
        bSum = model::Operand(inExpSum, rows, gfm::kPipeV, s, false, where, "SoftmaxFlashV2 inExpSum");
    }
    std::vector<float> x(bs.size()), rowMax(m), rowSum(m), rowExpMax(m);
    for (size_t i = 0; i < bs.size(); ++i) {
        x[i] = model::LoadUb<float>(bs[i]);
    }
    std::vector<float> inM(m), inS(m);
    for (uint32_t r = 0; r < m && isUpdate; ++r) {
        inM[r] = model::LoadUb<float>(bMax[r * per]);
        inS[r] = model::LoadUb<float>(bSum[r * per]);
    }
    // The temporary buffer is the API's: written by it.
    model::Operand(sharedTmpBuffer, model::Contiguous(sharedTmpBuffer.GetSize(), where), gfm::kPipeV, s, true, where,
                   "SoftmaxFlashV2 tmp");
    const auto bd = model::Operand(dst, tile, gfm::kPipeV, s, true, where, "SoftmaxFlashV2 dst");
    const auto bMaxOut = model::Operand(maxOut, rows, gfm::kPipeV, s, true, where, "SoftmaxFlashV2 max");
    const auto bSumOut = model::Operand(expSum, rows, gfm::kPipeV, s, true, where, "SoftmaxFlashV2 sum");
    std::vector<uint32_t> bExp;
    if (isUpdate) {
        bExp = model::Operand(expMax, rows, gfm::kPipeV, s, true, where, "SoftmaxFlashV2 expMax");
    }
    for (uint32_t r = 0; r < m; ++r) {
        float mx = x[static_cast<size_t>(r) * k];
        for (uint32_t j = 1; j < k; ++j) {
            mx = std::max(mx, x[static_cast<size_t>(r) * k + j]);
        }
        if (isUpdate) {
            mx = std::max(mx, inM[r]);
        }
        float sum = 0.0f;
        for (uint32_t j = 0; j < k; ++j) {
            const float e = std::exp(x[static_cast<size_t>(r) * k + j] - mx);
            x[static_cast<size_t>(r) * k + j] = e;
            sum += e;
        }
        rowMax[r] = mx;
        if (isUpdate) {
            rowExpMax[r] = std::exp(inM[r] - mx);
            sum = rowExpMax[r] * inS[r] + sum;
        }
        rowSum[r] = sum;
    }
    for (size_t i = 0; i < bd.size(); ++i) {
        model::StoreUb<float>(bd[i], x[i]);
    }
    for (uint32_t r = 0; r < m; ++r) {
        for (uint32_t e = 0; e < per; ++e) {
            model::StoreUb<float>(bMaxOut[r * per + e], rowMax[r]);
            model::StoreUb<float>(bSumOut[r * per + e], rowSum[r]);
            if (isUpdate) {
                model::StoreUb<float>(bExp[r * per + e], rowExpMax[r]);
            }
        }
    }
}

}  // namespace AscendC
