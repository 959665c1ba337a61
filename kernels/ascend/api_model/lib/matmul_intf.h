// The Matmul high-level API as the model answers it (doc: 高阶API/矩阵计算/Matmul-Kernel侧接口/*.md): the vector
// core's calls are served inline, as the cube core (the Matmul "server" REGIST_MATMUL_OBJ sets up) would answer
// them, synchronously: IterateAll returns once C is in GM.
//
// C[m x n] (=|+=) A[m x k] B[k x n] for SetSingleShape(m, n, k), products of the 16-bit inputs exact in fp32 and
// accumulated in fp32 in k order (the cube accumulates in fp32 in L0C; its summation order within a 16 x 16 x 16
// fractal is not documented, so results may differ from the device by fp32 rounding: see the tolerances).
// Layouts from SetOrgShape(orgM, orgN, orgKa, orgKb, orgKc) (doc: SetOrgShape.md): A stored orgM x orgKa row-major,
// or orgKa x orgM when SetTensorA(.., true) reads it transposed; B stored orgKb x orgN, or orgN x orgKb transposed;
// C rows orgKc apart (orgN when orgKc is 0).
#pragma once

#include <vector>

#include "kernel_operator.h"
#include "tiling/tiling_api.h"

namespace AscendC {

// doc: Matmul模板参数.md: MatmulType<position, format, dtype, isTrans>; isTrans enables transposed reads.
template <TPosition pos, CubeFormat format, typename T, bool isTrans = false>
struct MatmulType {
    using DataType = T;
    static constexpr bool kTrans = isTrans;
    static constexpr TPosition kPos = pos;
};

namespace model {

// Atlas A2 (910B) cube core memories, bytes (as op_host/gf_tiling_plan.h counts them).
constexpr int64_t kL1Bytes = 512 * 1024, kL0ABytes = 64 * 1024, kL0BBytes = 64 * 1024, kL0CBytes = 128 * 1024;
constexpr int32_t kAiCores = 24;

// The TCubeTiling constraints of TCubeTiling结构体.md, table 2, for 16-bit A and B and an fp32 L0C.
inline void CheckCubeTiling(const TCubeTiling& t, const Where& where)
{
    const int64_t e = 2;
    GFM_CHECK(t.usedCoreNum >= 1 && t.usedCoreNum <= kAiCores, where, "TCubeTiling: usedCoreNum outside 1..24");
    GFM_CHECK(t.baseM > 0 && t.baseN > 0 && t.baseK > 0 && t.baseM % 16 == 0 && t.baseN % 16 == 0 &&
                   t.baseK % 16 == 0,
               where, "TCubeTiling: base block not 16-aligned");
    GFM_CHECK(int64_t(t.baseM) * t.baseK * e * t.dbL0A < kL0ABytes, where,
               "TCubeTiling: baseM * baseK * dbL0A does not fit L0A (64 KiB)");
    GFM_CHECK(int64_t(t.baseN) * t.baseK * e * t.dbL0B < kL0BBytes, where,
               "TCubeTiling: baseN * baseK * dbL0B does not fit L0B (64 KiB)");
    GFM_CHECK(int64_t(t.baseM) * t.baseN * 4 * t.dbL0C < kL0CBytes, where,
               "TCubeTiling: baseM * baseN * dbL0C (fp32) does not fit L0C (128 KiB)");
    GFM_CHECK(t.depthA1 > 0 && t.depthB1 > 0 && t.stepM > 0 && t.stepN > 0 && t.stepKa > 0 && t.stepKb > 0, where,
               "TCubeTiling: depths and steps must be positive");
    GFM_CHECK(t.depthA1 % (t.stepM * t.stepKa) == 0 && t.depthB1 % (t.stepN * t.stepKb) == 0, where,
               "TCubeTiling: depthA1 / depthB1 not stepM * stepKa * db / stepN * stepKb * db");
    const int64_t l1 = int64_t(t.depthA1) * t.baseM * t.baseK * e + int64_t(t.depthB1) * t.baseN * t.baseK * e;
    GFM_CHECK(l1 <= kL1Bytes, where, "TCubeTiling: A and B blocks in L1 exceed 512 KiB");
}

}  // namespace model

template <class A_TYPE, class B_TYPE, class C_TYPE, class BIAS_TYPE = C_TYPE>
class Matmul {
public:
    using AT = typename A_TYPE::DataType;
    using BT = typename B_TYPE::DataType;
    using CT = typename C_TYPE::DataType;

    // doc: Init-85.md / REGIST_MATMUL_OBJ.md
    void Init(const TCubeTiling* tiling, TPipe* pipe, Where where = GFM_HERE)
    {
        (void)pipe;
        GFM_CHECK(tiling != nullptr, where, "Matmul without a TCubeTiling");
        model::CheckCubeTiling(*tiling, where);
        tiling_ = tiling;
    }
    // doc: SetOrgShape.md
    void SetOrgShape(int orgM, int orgN, int orgKa, int orgKb, int orgKc = 0, Where where = GFM_HERE)
    {
        GFM_CHECK(orgM > 0 && orgN > 0 && orgKa > 0 && orgKb > 0 && orgKc >= 0, where, "SetOrgShape: sizes must be > 0");
        orgM_ = orgM;
        orgN_ = orgN;
        orgKa_ = orgKa;
        orgKb_ = orgKb;
        orgKc_ = orgKc;
        haveA_ = haveB_ = false;
    }
    // doc: SetTensorA.md: isTransposeA needs MatmulType isTrans = true.
    void SetTensorA(const GlobalTensor<AT>& gm, bool isTransposeA = false, Where where = GFM_HERE)
    {
        GFM_CHECK(!isTransposeA || A_TYPE::kTrans, where, "SetTensorA(.., true) on a MatmulType without isTrans");
        a_ = gm;
        transA_ = isTransposeA;
        haveA_ = true;
    }
    // doc: SetTensorB.md
    void SetTensorB(const GlobalTensor<BT>& gm, bool isTransposeB = false, Where where = GFM_HERE)
    {
        GFM_CHECK(!isTransposeB || B_TYPE::kTrans, where, "SetTensorB(.., true) on a MatmulType without isTrans");
        b_ = gm;
        transB_ = isTransposeB;
        haveB_ = true;
    }
    // doc: SetSingleShape.md: within the shape the tiling was made for (its L1 / L0 budget was checked for it).
    void SetSingleShape(int m, int n, int k, Where where = GFM_HERE)
    {
        GFM_CHECK(tiling_ != nullptr, where, "SetSingleShape before REGIST_MATMUL_OBJ");
        GFM_CHECK(m > 0 && n > 0 && k > 0, where,
                   "SetSingleShape(" + std::to_string(m) + ", " + std::to_string(n) + ", " + std::to_string(k) +
                       "): sizes must be > 0");
        GFM_CHECK(m <= tiling_->singleCoreM && n <= tiling_->singleCoreN && k <= tiling_->singleCoreK, where,
                   "SetSingleShape beyond the tiling's singleCoreM/N/K");
        m_ = m;
        n_ = n;
        k_ = k;
    }
    // doc: IterateAll.md: enAtomic 0 writes C, 1 adds into it.
    void IterateAll(const GlobalTensor<CT>& c, uint8_t enAtomic = 0, bool enSequentialWrite = false,
                    bool waitIterateAll = false, bool fakeMsg = false, Where where = GFM_HERE)
    {
        (void)enSequentialWrite;
        (void)waitIterateAll;
        (void)fakeMsg;
        GFM_CHECK(haveA_ && haveB_ && m_ > 0 && orgM_ > 0, where,
                   "IterateAll without SetOrgShape, SetTensorA, SetTensorB and SetSingleShape");
        GFM_CHECK(enAtomic <= 1, where, "IterateAll: the model serves enAtomic 0 and 1");
        // The cube starts on the scalar unit's message: it sees what the scalar pipe is ordered after.
        const uint32_t s = gfm::Begin(gfm::kPipeCube);
        gfm::Join(gfm::kPipeCube, gfm::SnapshotOf(gfm::kPipeS));
        std::vector<float> a(static_cast<size_t>(m_) * k_), b(static_cast<size_t>(k_) * n_);
        if (!transA_) {  // rows i of orgKa elements
            for (int i = 0; i < m_; ++i) {
                const AT* row = a_.address_ + static_cast<int64_t>(i) * orgKa_;
                gfm::TrackGm(row, sizeof(AT) * k_, gfm::kPipeCube, s, false, where);
                for (int q = 0; q < k_; ++q) {
                    a[static_cast<size_t>(i) * k_ + q] = static_cast<float>(row[q]);
                }
            }
        } else {  // stored k x orgM
            for (int q = 0; q < k_; ++q) {
                const AT* row = a_.address_ + static_cast<int64_t>(q) * orgM_;
                gfm::TrackGm(row, sizeof(AT) * m_, gfm::kPipeCube, s, false, where);
                for (int i = 0; i < m_; ++i) {
                    a[static_cast<size_t>(i) * k_ + q] = static_cast<float>(row[i]);
                }
            }
        }
        if (!transB_) {  // rows q of orgN elements
            for (int q = 0; q < k_; ++q) {
                const BT* row = b_.address_ + static_cast<int64_t>(q) * orgN_;
                gfm::TrackGm(row, sizeof(BT) * n_, gfm::kPipeCube, s, false, where);
                for (int j = 0; j < n_; ++j) {
                    b[static_cast<size_t>(q) * n_ + j] = static_cast<float>(row[j]);
                }
            }
        } else {  // stored n x orgKb
            for (int j = 0; j < n_; ++j) {
                const BT* row = b_.address_ + static_cast<int64_t>(j) * orgKb_;
                gfm::TrackGm(row, sizeof(BT) * k_, gfm::kPipeCube, s, false, where);
                for (int q = 0; q < k_; ++q) {
                    b[static_cast<size_t>(q) * n_ + j] = static_cast<float>(row[q]);
                }
            }
        }
        const int64_t ldc = orgKc_ > 0 ? orgKc_ : orgN_;
        std::vector<float> acc(static_cast<size_t>(n_));
        for (int i = 0; i < m_; ++i) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int q = 0; q < k_; ++q) {
                const float x = a[static_cast<size_t>(i) * k_ + q];
                const float* brow = &b[static_cast<size_t>(q) * n_];
                for (int j = 0; j < n_; ++j) {
                    acc[j] += x * brow[j];
                }
            }
            CT* row = c.address_ + i * ldc;
            if (enAtomic) {
                gfm::TrackGm(row, sizeof(CT) * n_, gfm::kPipeCube, s, false, where);
            }
            gfm::TrackGm(row, sizeof(CT) * n_, gfm::kPipeCube, s, true, where);
            for (int j = 0; j < n_; ++j) {
                row[j] = enAtomic ? row[j] + acc[j] : acc[j];
            }
        }
        // Synchronous: the scalar unit waits for the reply, so whatever it issues next is ordered after the cube.
        const gfm::Snapshot done = gfm::SnapshotOf(gfm::kPipeCube);
        for (int p = 0; p < gfm::kPipeCount; ++p) {
            gfm::Join(p, done);
        }
    }
    // doc: End.md
    void End() { tiling_ = tiling_; }

private:
    const TCubeTiling* tiling_ = nullptr;
    int orgM_ = 0, orgN_ = 0, orgKa_ = 0, orgKb_ = 0, orgKc_ = 0, m_ = 0, n_ = 0, k_ = 0;
    bool transA_ = false, transB_ = false, haveA_ = false, haveB_ = false;
    GlobalTensor<AT> a_;
    GlobalTensor<BT> b_;
};

namespace model {
inline void RegisterMatmuls(TPipe*) {}
template <class M, class... Rest>
inline void RegisterMatmuls(TPipe* pipe, M& matmul, const TCubeTiling* tiling, Rest&&... rest)
{
    matmul.Init(tiling, pipe);
    RegisterMatmuls(pipe, rest...);
}
}  // namespace model

}  // namespace AscendC

// doc: REGIST_MATMUL_OBJ.md: (pipe, system workspace, matmul object, its tiling, ...).
#define REGIST_MATMUL_OBJ(pipe, workspace, ...) AscendC::model::RegisterMatmuls((pipe), __VA_ARGS__)
