// kernel_operator.h of the mindformer_gf functional model of the Ascend C API: enough of the API, with its
// documented semantics, for kernels/ascend/op_kernel/*.cpp to compile unchanged with g++ and run on x86.
//
// API followed: asc-devkit 9.1.0 (mirror-cann/asc-devkit commit 82b89a15, its docs/zh/api pages cited per call as
// "doc: <page>", paths under docs/zh/api/SIMD-API/), level-0 forms as impl/basic_api/dav_c220 (Atlas A2, dav-2201)
// accepts them. WholeReduceSum is the 8.x name of what 9.1.0 documents as ReduceRepeat (the headers still declare
// WholeReduceSum); the model follows the ReduceRepeat page for it. Written here from those pages; no CANN code or
// text is copied (CANN Open Software License).
//
// Numbers: fp32 vector operations in fp32 (Exp, Ln, Sqrt from libm, Div and Sqrt IEEE-rounded), 16-bit float
// operations in fp32 then rounded to the 16-bit type with ties-to-even (innocuous double rounding for + - * / sqrt),
// 32-bit integer operations modulo 2^32, Cast per the A2 table of the Cast page. What this can and cannot show:
// kernels/ascend/README.md, "Running on the API model".
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "gf_model_state.h"
#include "gf_model_types.h"

#define __aicore__
#define __global__
#define __gm__
using GM_ADDR = uint8_t*;

// ---- enumerations the kernels name unqualified ------------------------------------------------------------------

enum pipe_t { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_FIX };
enum event_t : int { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };
enum class CubeFormat { ND = 0, NZ };
enum KernelType { KERNEL_TYPE_AIV_ONLY = 1, KERNEL_TYPE_AIC_ONLY, KERNEL_TYPE_MIX_AIC_1_1, KERNEL_TYPE_MIX_AIC_1_2 };

namespace gfm {
struct LaunchInfo {
    int kernelType = 0;
    uint8_t* workspace = nullptr;
    uint64_t sysWorkspaceBytes = 0;
};
inline LaunchInfo& Launch()
{
    static LaunchInfo info;
    return info;
}
}  // namespace gfm

// doc: 基础API/工具接口 (KERNEL_TASK_TYPE_DEFAULT): the launch records the kernel's core type for the harness check.
#define KERNEL_TASK_TYPE_DEFAULT(type) (gfm::Launch().kernelType = (type))

namespace AscendC {

using Where = gfm::Where;

enum class TPosition { GM = 0, A1, A2, B1, B2, C1, C2, CO1, CO2, VECIN, VECOUT, VECCALC, LCM = VECCALC, SPM, SHM };
using QuePosition = TPosition;
enum class RoundMode { CAST_NONE = 0, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD };
enum class HardEvent { MTE2_MTE1, MTE1_MTE2, MTE1_M, M_MTE1, MTE2_V, V_MTE2, MTE3_V, V_MTE3, M_V, V_M, V_V,
                       MTE3_MTE1, MTE1_MTE3, MTE1_V, MTE2_M, M_MTE2, V_MTE1, M_FIX, FIX_M, MTE3_M, M_MTE3,
                       MTE2_MTE3, MTE3_MTE2, S_V, V_S, S_MTE2, MTE2_S, S_MTE3, MTE3_S, MTE2_FIX, FIX_MTE2, FIX_S,
                       S_FIX, M_S, FIX_MTE3, MTE1_FIX, FIX_MTE1, FIX_FIX, MAX };

template <typename A, typename B>
struct IsSameType {
    static constexpr bool value = std::is_same<A, B>::value;
};

namespace model {

// (source pipe, destination pipe) of the events the model serves; others are refused loudly.
inline bool EventPipes(HardEvent e, int* src, int* dst)
{
    switch (e) {
        case HardEvent::MTE2_V: *src = gfm::kPipeMte2; *dst = gfm::kPipeV; return true;
        case HardEvent::V_MTE2: *src = gfm::kPipeV; *dst = gfm::kPipeMte2; return true;
        case HardEvent::MTE3_V: *src = gfm::kPipeMte3; *dst = gfm::kPipeV; return true;
        case HardEvent::V_MTE3: *src = gfm::kPipeV; *dst = gfm::kPipeMte3; return true;
        case HardEvent::MTE3_S: *src = gfm::kPipeMte3; *dst = gfm::kPipeS; return true;
        case HardEvent::S_V: *src = gfm::kPipeS; *dst = gfm::kPipeV; return true;
        case HardEvent::V_S: *src = gfm::kPipeV; *dst = gfm::kPipeS; return true;
        case HardEvent::MTE2_S: *src = gfm::kPipeMte2; *dst = gfm::kPipeS; return true;
        case HardEvent::S_MTE2: *src = gfm::kPipeS; *dst = gfm::kPipeMte2; return true;
        case HardEvent::S_MTE3: *src = gfm::kPipeS; *dst = gfm::kPipeMte3; return true;
        case HardEvent::MTE3_MTE2: *src = gfm::kPipeMte3; *dst = gfm::kPipeMte2; return true;
        case HardEvent::MTE2_MTE3: *src = gfm::kPipeMte2; *dst = gfm::kPipeMte3; return true;
        default: return false;
    }
}

// UB buffers handed out by TPipe::InitBuffer.
enum class BufferState { kFree, kAllocated, kQueued, kDequeued, kCalc };
struct Buffer {
    uint32_t offset = 0, bytes = 0, generation = 0;
    BufferState state = BufferState::kFree;
    TPosition position = TPosition::VECCALC;
    gfm::Snapshot handOff;  // EnQue -> DeQue
    gfm::Snapshot release;  // FreeTensor -> the next AllocTensor
    bool released = false;
    bool retired = false;  // TPipe::Reset freed it for good
};
inline std::vector<Buffer>& Buffers()
{
    static std::vector<Buffer> buffers;
    return buffers;
}

}  // namespace model

// ---- LocalTensor ---------------------------------------------------------------------------------------------
// doc: 基础API/数据结构/LocalTensor. A view of UB from `addr_` to the end of the buffer it was cut from; operator[]
// moves the start (offset in elements), ReinterpretCast changes the element type of the same bytes. Each use checks
// the buffer is still the one the tensor was taken from (not freed, not reset) and that the access stays inside it.
template <typename T>
class LocalTensor {
public:
    uint32_t addr_ = 0;       // UB byte offset
    uint32_t end_ = 0;        // UB byte offset of the owning buffer's end
    int buffer_ = -1;         // index in model::Buffers()
    uint32_t generation_ = 0;
    bool pastEnd_ = false;    // operator[] went beyond the buffer (reported at the first use, with its line)

    LocalTensor operator[](uint32_t offset) const
    {
        LocalTensor t = *this;
        const uint64_t at = static_cast<uint64_t>(addr_) + static_cast<uint64_t>(offset) * sizeof(T);
        t.pastEnd_ = pastEnd_ || at > end_;
        t.addr_ = static_cast<uint32_t>(at > end_ ? end_ : at);
        return t;
    }
    template <typename U>
    LocalTensor<U> ReinterpretCast() const
    {
        LocalTensor<U> t;
        t.addr_ = addr_;
        t.end_ = end_;
        t.buffer_ = buffer_;
        t.generation_ = generation_;
        t.pastEnd_ = pastEnd_;
        return t;
    }
    uint32_t GetSize() const { return (end_ - addr_) / sizeof(T); }
    T* Raw() const { return reinterpret_cast<T*>(gfm::Model().ub + addr_); }

    // The UB byte offset of elements [first, first + count), after the checks.
    uint32_t Resolve(uint64_t first, uint64_t count, const Where& where, const char* what) const
    {
        GFM_CHECK(buffer_ >= 0, where, std::string(what) + ": LocalTensor that no queue or buffer handed out");
        const model::Buffer& b = model::Buffers()[buffer_];
        GFM_CHECK(b.generation == generation_, where,
                   std::string(what) + ": LocalTensor used after FreeTensor (or after TPipe::Reset)");
        GFM_CHECK(b.state != model::BufferState::kFree, where, std::string(what) + ": LocalTensor of a free buffer");
        GFM_CHECK(!pastEnd_, where, std::string(what) + ": operator[] offset beyond the end of its buffer");
        const uint64_t start = addr_ + first * sizeof(T);
        const uint64_t stop = start + count * sizeof(T);
        GFM_CHECK(stop <= end_, where,
                   std::string(what) + ": UB access past the end of its buffer: bytes [" +
                       std::to_string(start - b.offset) + ", " + std::to_string(stop - b.offset) + ") of a " +
                       std::to_string(b.bytes) + "-byte buffer");
        return static_cast<uint32_t>(start);
    }
};

// ---- GlobalTensor --------------------------------------------------------------------------------------------
// doc: 基础API/数据结构/GlobalTensor. A typed GM address; bounds come from the allocations the launch registered.
template <typename T>
class GlobalTensor {
public:
    T* address_ = nullptr;

    void SetGlobalBuffer(T* buffer, uint64_t bufferSize = 0) { address_ = buffer; (void)bufferSize; }
    // doc: GlobalTensor/GetValue: a scalar read of GM on the scalar unit.
    T GetValue(uint64_t offset, Where where = GFM_HERE) const
    {
        const uint32_t s = gfm::Begin(gfm::kPipeS);
        gfm::TrackGm(address_ + offset, sizeof(T), gfm::kPipeS, s, false, where);
        return address_[offset];
    }
    GlobalTensor operator[](uint64_t offset) const
    {
        GlobalTensor t;
        t.address_ = address_ + offset;
        return t;
    }
    const T* GetPhyAddr() const { return address_; }
    T* GetPhyAddr(uint64_t offset) const { return address_ + offset; }
};

// ---- TQue, TBuf, TPipe ---------------------------------------------------------------------------------------

class TPipe;

// doc: 基础API/资源管理/TQue (AllocTensor, EnQue, DeQue, FreeTensor). EnQue / DeQue hand a buffer from the
// producing pipe to the consuming one: VECIN MTE2 -> V, VECOUT V -> MTE3; FreeTensor / AllocTensor hand it back
// (VECIN V -> MTE2, VECOUT MTE3 -> V). `depth` bounds the tensors in the queue at once.
template <TPosition pos, int32_t depth>
class TQue {
public:
    std::vector<int> buffers_;
    std::vector<int> queued_;  // FIFO of buffer indices

    static int Producer() { return pos == TPosition::VECIN ? gfm::kPipeMte2 : gfm::kPipeV; }
    static int Consumer() { return pos == TPosition::VECIN ? gfm::kPipeV : gfm::kPipeMte3; }

    template <typename T>
    LocalTensor<T> AllocTensor(Where where = GFM_HERE)
    {
        GFM_CHECK(!buffers_.empty(), where, "AllocTensor on a queue TPipe::InitBuffer never initialised");
        for (int index : buffers_) {
            model::Buffer& b = model::Buffers()[index];
            GFM_CHECK(!b.retired, where, "AllocTensor on a queue after TPipe::Reset without a new InitBuffer");
            if (b.state == model::BufferState::kFree) {
                b.state = model::BufferState::kAllocated;
                if (b.released) {
                    gfm::Join(Producer(), b.release);
                }
                LocalTensor<T> t;
                t.addr_ = b.offset;
                t.end_ = b.offset + b.bytes;
                t.buffer_ = index;
                t.generation_ = b.generation;
                return t;
            }
        }
        gfm::Fail(where, "AllocTensor with all " + std::to_string(buffers_.size()) +
                             " buffers of the queue in use (the device would wait forever)");
    }
    template <typename T>
    void EnQue(const LocalTensor<T>& t, Where where = GFM_HERE)
    {
        model::Buffer& b = Owned(t, where, "EnQue");
        GFM_CHECK(b.state == model::BufferState::kAllocated, where, "EnQue of a tensor not freshly allocated");
        GFM_CHECK(static_cast<int32_t>(queued_.size()) < depth, where,
                   "EnQue beyond the queue depth " + std::to_string(depth));
        b.state = model::BufferState::kQueued;
        b.handOff = gfm::SnapshotOf(Producer());
        queued_.push_back(t.buffer_);
    }
    template <typename T>
    LocalTensor<T> DeQue(Where where = GFM_HERE)
    {
        GFM_CHECK(!queued_.empty(), where, "DeQue without EnQue (empty queue: the device would wait forever)");
        const int index = queued_.front();
        queued_.erase(queued_.begin());
        model::Buffer& b = model::Buffers()[index];
        b.state = model::BufferState::kDequeued;
        gfm::Join(Consumer(), b.handOff);
        LocalTensor<T> t;
        t.addr_ = b.offset;
        t.end_ = b.offset + b.bytes;
        t.buffer_ = index;
        t.generation_ = b.generation;
        return t;
    }
    template <typename T>
    void FreeTensor(const LocalTensor<T>& t, Where where = GFM_HERE)
    {
        model::Buffer& b = Owned(t, where, "FreeTensor");
        GFM_CHECK(b.state != model::BufferState::kQueued, where, "FreeTensor of a tensor still in the queue");
        b.state = model::BufferState::kFree;
        b.release = gfm::SnapshotOf(Consumer());
        b.released = true;
        ++b.generation;
    }

private:
    template <typename T>
    model::Buffer& Owned(const LocalTensor<T>& t, const Where& where, const char* what)
    {
        bool mine = false;
        for (int index : buffers_) {
            mine = mine || index == t.buffer_;
        }
        GFM_CHECK(mine, where, std::string(what) + " of a tensor from another queue");
        model::Buffer& b = model::Buffers()[t.buffer_];
        GFM_CHECK(b.generation == t.generation_ && b.state != model::BufferState::kFree, where,
                   std::string(what) + " of a tensor already freed");
        GFM_CHECK(t.addr_ == b.offset, where, std::string(what) + " of a tensor that is not the buffer's start");
        return b;
    }
};

// doc: 基础API/资源管理/TBuf (Get): a calculation buffer, always the whole of it, no hand-off.
template <TPosition pos>
class TBuf {
public:
    int buffer_ = -1;
    template <typename T>
    LocalTensor<T> Get(Where where = GFM_HERE) const
    {
        GFM_CHECK(buffer_ >= 0, where, "TBuf::Get on a buffer TPipe::InitBuffer never initialised");
        const model::Buffer& b = model::Buffers()[buffer_];
        LocalTensor<T> t;
        t.addr_ = b.offset;
        t.end_ = b.offset + b.bytes;
        t.buffer_ = buffer_;
        t.generation_ = b.generation;
        return t;
    }
    template <typename T>
    LocalTensor<T> Get(uint32_t count, Where where = GFM_HERE) const
    {
        LocalTensor<T> t = Get<T>(where);
        GFM_CHECK(count * sizeof(T) <= t.end_ - t.addr_, where, "TBuf::Get(count) beyond the buffer");
        t.end_ = t.addr_ + count * sizeof(T);
        return t;
    }
};

// doc: 基础API/资源管理/TPipe (InitBuffer, Reset, FetchEventID). Buffers are laid out one after another from UB
// address 0, each rounded up to 32 bytes; all of them must fit the 910B's 192 KiB.
class TPipe {
public:
    uint32_t used_ = 0;
    int nextEvent_ = 0;
    TPipe();
    ~TPipe();

    template <TPosition pos, int32_t depth>
    void InitBuffer(TQue<pos, depth>& que, uint8_t num, uint32_t len, Where where = GFM_HERE)
    {
        GFM_CHECK(num >= 1, where, "InitBuffer with no buffer");
        bool retired = true;
        for (int index : que.buffers_) {
            retired = retired && model::Buffers()[index].retired;
        }
        GFM_CHECK(retired, where, "InitBuffer twice on one queue without TPipe::Reset");
        que.buffers_.clear();
        que.queued_.clear();
        for (uint8_t i = 0; i < num; ++i) {
            que.buffers_.push_back(Carve(len, pos, model::BufferState::kFree, where));
        }
    }
    template <TPosition pos>
    void InitBuffer(TBuf<pos>& buf, uint32_t len, Where where = GFM_HERE)
    {
        GFM_CHECK(buf.buffer_ < 0 || model::Buffers()[buf.buffer_].retired, where,
                   "InitBuffer twice on one TBuf without TPipe::Reset");
        buf.buffer_ = Carve(len, pos, model::BufferState::kCalc, where);
    }
    // Frees every buffer: tensors taken before are invalid after it; queues and TBufs must be initialised anew.
    void Reset(Where where = GFM_HERE);
    template <HardEvent event>
    int FetchEventID(Where where = GFM_HERE)
    {
        int src, dst;
        GFM_CHECK(model::EventPipes(event, &src, &dst), where, "FetchEventID of an event the model does not serve");
        return nextEvent_++ % 8;
    }
    int FetchEventID(HardEvent event, Where where = GFM_HERE)
    {
        int src, dst;
        GFM_CHECK(model::EventPipes(event, &src, &dst), where, "FetchEventID of an event the model does not serve");
        return nextEvent_++ % 8;
    }

private:
    int Carve(uint32_t len, TPosition pos, model::BufferState state, const Where& where)
    {
        const uint32_t bytes = (len + 31u) / 32u * 32u;
        GFM_CHECK(len > 0, where, "InitBuffer of 0 bytes");
        GFM_CHECK(static_cast<uint64_t>(used_) + bytes <= gfm::kUbBytes, where,
                   "Unified Buffer overflow: " + std::to_string(used_) + " bytes in use + " + std::to_string(bytes) +
                       " > 192 KiB");
        model::Buffer b;
        b.offset = used_;
        b.bytes = bytes;
        b.position = pos;
        b.state = state;
        model::Buffers().push_back(b);
        used_ += bytes;
        if (used_ > gfm::Model().ubPeakBytes) {
            gfm::Model().ubPeakBytes = used_;
        }
        return static_cast<int>(model::Buffers().size()) - 1;
    }
};

}  // namespace AscendC

namespace gfm {
inline AscendC::TPipe*& CurrentPipe()
{
    static AscendC::TPipe* pipe = nullptr;
    return pipe;
}
}  // namespace gfm

// doc: 基础API/资源管理/GetTPipePtr: the current kernel's TPipe (a global function, not in namespace AscendC).
inline AscendC::TPipe* GetTPipePtr() { return gfm::CurrentPipe(); }

inline AscendC::TPipe::TPipe()
{
    gfm::CurrentPipe() = this;
    model::Buffers().clear();
}
inline AscendC::TPipe::~TPipe()
{
    if (gfm::CurrentPipe() == this) {
        gfm::CurrentPipe() = nullptr;
    }
}
inline void AscendC::TPipe::Reset(Where where)
{
    (void)where;
    for (auto& b : model::Buffers()) {
        ++b.generation;
        b.state = model::BufferState::kFree;
        b.retired = true;
    }
    used_ = 0;
}

namespace AscendC {

// ---- synchronisation -----------------------------------------------------------------------------------------

// doc: 基础API/同步控制/PipeBarrier: every instruction of `pipe` issued before completes before any issued after.
template <pipe_t pipe>
inline void PipeBarrier(Where where = GFM_HERE)
{
    if (pipe == PIPE_ALL) {
        gfm::BarrierAll();
    } else if (pipe == PIPE_V) {
        gfm::Barrier(gfm::kPipeV);
    } else if (pipe == PIPE_MTE2) {
        gfm::Barrier(gfm::kPipeMte2);
    } else if (pipe == PIPE_MTE3) {
        gfm::Barrier(gfm::kPipeMte3);
    } else if (pipe == PIPE_S) {
        gfm::Barrier(gfm::kPipeS);
    } else {
        gfm::Fail(where, "PipeBarrier on a pipe the vector core does not have");
    }
}

// doc: 基础API/同步控制/SetFlag&WaitFlag: SetFlag<SRC_DST>(id) fires when everything issued to SRC before it has
// completed; WaitFlag<SRC_DST>(id) holds DST until then. A WaitFlag with no SetFlag before it never returns.
template <HardEvent event>
inline void SetFlag(int32_t id, Where where = GFM_HERE)
{
    int src, dst;
    GFM_CHECK(model::EventPipes(event, &src, &dst), where, "SetFlag of an event the model does not serve");
    GFM_CHECK(id >= 0 && id < 8, where, "event id outside 0..7");
    gfm::Model().flags.push_back({src, dst, id, gfm::SnapshotOf(src)});
}

template <HardEvent event>
inline void WaitFlag(int32_t id, Where where = GFM_HERE)
{
    int src, dst;
    GFM_CHECK(model::EventPipes(event, &src, &dst), where, "WaitFlag of an event the model does not serve");
    auto& flags = gfm::Model().flags;
    for (size_t i = 0; i < flags.size(); ++i) {
        if (flags[i].src == src && flags[i].dst == dst && flags[i].id == id) {
            gfm::Join(dst, flags[i].snap);
            flags.erase(flags.begin() + static_cast<long>(i));
            return;
        }
    }
    gfm::Fail(where, "WaitFlag with no matching SetFlag (event " + std::string(gfm::PipeName(src)) + "_" +
                         gfm::PipeName(dst) + ", id " + std::to_string(id) + "): the device would wait forever");
}

// doc: 基础API/工具接口 GetBlockIdx: in a MIX launch the vector cores are numbered 0 .. 2 * blockDim - 1.
inline int64_t GetBlockIdx() { return gfm::Model().core; }

// doc: 基础API/工具接口 GetUserWorkspace: the part of the workspace after what the libraries reserve.
inline GM_ADDR GetUserWorkspace(GM_ADDR workspace) { return workspace + gfm::Launch().sysWorkspaceBytes; }

// ---- repeat parameters (doc: Memory矢量计算/SIMD计算说明/高维切分) --------------------------------------------------

struct BinaryRepeatParams {
    uint8_t dstBlkStride = 1, src0BlkStride = 1, src1BlkStride = 1;
    uint8_t dstRepStride = 8, src0RepStride = 8, src1RepStride = 8;
    BinaryRepeatParams() = default;
    BinaryRepeatParams(uint8_t d, uint8_t s0, uint8_t s1, uint8_t dr, uint8_t s0r, uint8_t s1r)
        : dstBlkStride(d), src0BlkStride(s0), src1BlkStride(s1), dstRepStride(dr), src0RepStride(s0r),
          src1RepStride(s1r)
    {
    }
};

struct UnaryRepeatParams {
    uint16_t dstBlkStride = 1, srcBlkStride = 1;
    uint8_t dstRepStride = 8, srcRepStride = 8;
    UnaryRepeatParams() = default;
    UnaryRepeatParams(uint16_t d, uint16_t s, uint8_t dr, uint8_t sr)
        : dstBlkStride(d), srcBlkStride(s), dstRepStride(dr), srcRepStride(sr)
    {
    }
};

struct BrcbRepeatParams {
    uint16_t dstBlkStride = 1, dstRepStride = 8;
    BrcbRepeatParams() = default;
    BrcbRepeatParams(uint16_t d, uint16_t r) : dstBlkStride(d), dstRepStride(r) {}
};

struct DataCopyExtParams {
    uint16_t blockCount = 1;
    uint32_t blockLen = 0;   // bytes
    uint32_t srcStride = 0;  // GM side: bytes; UB side: 32-byte blocks
    uint32_t dstStride = 0;
    uint32_t rsv = 0;
};

template <typename T>
struct DataCopyPadExtParams {
    bool isPad = false;
    uint8_t leftPadding = 0;
    uint8_t rightPadding = 0;
    T paddingValue = T();
};

namespace model {

template <typename T>
struct Lanes {
    static constexpr uint32_t kPerBlock = 32 / sizeof(T);
    static constexpr uint32_t kPerRepeat = 256 / sizeof(T);
};

// Element offsets (from the tensor's start) that a level-0 instruction touches, lane by lane: repeat r, lane l of
// 256 / sizeof(T) in block l / perBlock, at (r * repStride + block * blkStride) * 32 bytes + (l % perBlock).
template <typename T>
std::vector<uint32_t> Level0Offsets(const std::vector<uint8_t>& laneMask, uint32_t repeat, uint32_t blkStride,
                                    uint32_t repStride)
{
    std::vector<uint32_t> offsets;
    offsets.reserve(static_cast<size_t>(repeat) * laneMask.size());
    const uint32_t per = Lanes<T>::kPerBlock;
    for (uint32_t r = 0; r < repeat; ++r) {
        for (uint32_t l = 0; l < laneMask.size(); ++l) {
            if (laneMask[l]) {
                offsets.push_back((r * repStride + (l / per) * blkStride) * per + l % per);
            }
        }
    }
    return offsets;
}

// doc: Memory矢量计算/SIMD计算说明/掩码: continuous mode, the first `count` lanes (1 .. 256 / sizeof(T)).
template <typename T>
std::vector<uint8_t> ContinuousMask(uint64_t count, const Where& where)
{
    GFM_CHECK(count >= 1 && count <= Lanes<T>::kPerRepeat, where,
               "mask (continuous mode) " + std::to_string(count) + " outside 1.." +
                   std::to_string(Lanes<T>::kPerRepeat));
    std::vector<uint8_t> m(Lanes<T>::kPerRepeat, 0);
    for (uint64_t l = 0; l < count; ++l) {
        m[l] = 1;
    }
    return m;
}

// Bit-wise mode: bit l of mask[l / 64]; 32-bit types have 64 lanes, so mask[1] must be 0.
template <typename T>
std::vector<uint8_t> BitMask(const uint64_t mask[2], const Where& where)
{
    std::vector<uint8_t> m(Lanes<T>::kPerRepeat, 0);
    if (sizeof(T) == 4) {
        GFM_CHECK(mask[1] == 0, where, "mask[1] must be 0 for 32-bit data (64 lanes)");
    }
    GFM_CHECK(mask[0] != 0 || mask[1] != 0, where, "mask with no lane set");
    for (uint32_t l = 0; l < m.size(); ++l) {
        m[l] = static_cast<uint8_t>((mask[l / 64] >> (l % 64)) & 1u);
    }
    return m;
}

inline std::vector<uint32_t> Contiguous(int64_t count, const Where& where)
{
    GFM_CHECK(count >= 0, where, "negative element count");
    std::vector<uint32_t> offsets(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
        offsets[static_cast<size_t>(i)] = static_cast<uint32_t>(i);
    }
    return offsets;
}

inline void CheckRepeat(int64_t repeat, const Where& where)
{
    GFM_CHECK(repeat >= 0 && repeat <= 255, where, "repeatTimes " + std::to_string(repeat) + " outside 0..255");
}

// Bounds, liveness, 32-byte alignment of the operand's start (doc: 高维切分, "操作数地址对齐要求") and pipe
// ordering of each element; returns the UB byte offsets.
template <typename T>
std::vector<uint32_t> Operand(const LocalTensor<T>& t, const std::vector<uint32_t>& offsets, int pipe, uint32_t s,
                              bool write, const Where& where, const char* what)
{
    uint32_t maxOffset = 0;
    for (uint32_t o : offsets) {
        maxOffset = o > maxOffset ? o : maxOffset;
    }
    const uint32_t base = t.Resolve(0, offsets.empty() ? 0 : maxOffset + 1, where, what);
    GFM_CHECK(base % 32 == 0, where, std::string(what) + ": UB operand not 32-byte aligned (offset " +
                                          std::to_string(base) + ")");
    std::vector<uint32_t> bytes(offsets.size());
    const bool contiguous = offsets.empty() || maxOffset + 1 == offsets.size();  // 0, 1, 2, ... (count form)
    for (size_t i = 0; i < offsets.size(); ++i) {
        bytes[i] = base + offsets[i] * static_cast<uint32_t>(sizeof(T));
        if (!contiguous) {
            gfm::TrackUb(bytes[i], sizeof(T), pipe, s, write, where);
        }
    }
    if (contiguous && !offsets.empty()) {
        gfm::TrackUb(base, static_cast<uint32_t>(offsets.size() * sizeof(T)), pipe, s, write, where);
    }
    return bytes;
}

template <typename T>
inline T LoadUb(uint32_t byte)
{
    T v;
    std::memcpy(&v, gfm::Model().ub + byte, sizeof(T));
    return v;
}
template <typename T>
inline void StoreUb(uint32_t byte, T v)
{
    std::memcpy(gfm::Model().ub + byte, &v, sizeof(T));
}

// Arithmetic in the precision the vector unit uses for T: fp32 for float, fp32 rounded back to the 16-bit type for
// half / bfloat16_t, modulo 2^32 (or 2^16) for integers.
template <typename T>
struct Arith {
    using Wide = typename std::conditional<std::is_integral<T>::value, int64_t, float>::type;
    static Wide Widen(T v)
    {
        if constexpr (std::is_integral<T>::value) {
            return static_cast<Wide>(v);
        } else {
            return static_cast<float>(v);
        }
    }
    static T Narrow(Wide w)
    {
        if constexpr (std::is_integral<T>::value) {  // the low bits, as the hardware keeps them
            return static_cast<T>(static_cast<typename std::make_unsigned<T>::type>(static_cast<uint64_t>(w)));
        } else {
            return T(static_cast<float>(w));
        }
    }
};

enum class Op { kAdd, kSub, kMul, kDiv, kMax, kMin, kAnd, kOr };

template <typename W>
inline W Apply(Op op, W a, W b)
{
    switch (op) {
        case Op::kAdd: return a + b;
        case Op::kSub: return a - b;
        case Op::kMul:
            if constexpr (std::is_integral<W>::value) {
                return static_cast<W>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));  // low bits kept
            } else {
                return a * b;
            }
        case Op::kDiv: return a / b;
        case Op::kMax: return a > b ? a : b;
        case Op::kMin: return a < b ? a : b;
        case Op::kAnd:
            if constexpr (std::is_integral<W>::value) {
                return a & b;
            } else {
                return a;
            }
        case Op::kOr:
            if constexpr (std::is_integral<W>::value) {
                return a | b;
            } else {
                return a;
            }
    }
    return a;
}

template <typename T>
void CheckTypes(Op op, const Where& where, const char* name)
{
    const bool isFloat = std::is_same<T, float>::value || std::is_same<T, half>::value;
    const bool isInt = std::is_same<T, int32_t>::value || std::is_same<T, int16_t>::value;
    bool ok = false;
    switch (op) {
        case Op::kAdd: case Op::kSub: case Op::kMul: case Op::kMax: case Op::kMin: ok = isFloat || isInt; break;
        case Op::kDiv: ok = isFloat; break;
        case Op::kAnd: case Op::kOr: ok = std::is_same<T, uint16_t>::value || std::is_same<T, int16_t>::value; break;
    }
    GFM_CHECK(ok, where, std::string(name) + ": data type not supported on Atlas A2 (doc table of the page)");
}

// doc: SIMD-API/通用说明和约束.md, 通用地址重叠约束: within one iteration a source may overlap the destination only
// 100% (each element read by the lane that writes it); across iterations no later iteration may read what an
// earlier one wrote, except for Add, Sub, Mul, Max, Min of half / int32_t / float when only src1 overlaps and
// src1RepStride or dstRepStride is 0 (an accumulation). The model reads every input before writing any output, so
// without this check an overlap the hardware computes differently would give the right numbers here.
// The lists hold the UB byte address of each lane, repeat after repeat, `perRepeat` lanes in each; elements of
// `dstSize` and `srcSize` bytes (a Cast changes the size: then no overlap within an iteration is 100%).
inline void CheckOverlap(const std::vector<uint32_t>& dstLanes, uint32_t dstSize, const std::vector<uint32_t>& srcLanes,
                         uint32_t srcSize, size_t perRepeat, bool accumulationAllowed, const Where& where,
                         const char* name, const char* operand)
{
    static std::vector<uint32_t> stamp(gfm::kUbBytes / 2), firstLane(gfm::kUbBytes / 2);
    static uint32_t epoch = 0;
    if (++epoch == 0) {  // wrapped: forget every stamp
        std::fill(stamp.begin(), stamp.end(), 0u);
        epoch = 1;
    }
    for (size_t g = 0; g < dstLanes.size(); ++g) {
        for (uint32_t slot = dstLanes[g] / 2; slot < (dstLanes[g] + dstSize) / 2; ++slot) {
            if (stamp[slot] != epoch) {  // lanes come in repeat order: the first writer is the earliest iteration
                stamp[slot] = epoch;
                firstLane[slot] = static_cast<uint32_t>(g);
            }
        }
    }
    for (size_t j = 0; j < srcLanes.size(); ++j) {
        for (uint32_t slot = srcLanes[j] / 2; slot < (srcLanes[j] + srcSize) / 2; ++slot) {
            if (stamp[slot] != epoch || (dstSize == srcSize && firstLane[slot] == j)) {
                continue;  // not written by this instruction, or in place
            }
            const size_t writer = firstLane[slot] / perRepeat, reader = j / perRepeat;
            GFM_CHECK(writer != reader, where,
                      std::string(name) + ": " + operand +
                          " partly overlaps the destination within one iteration (UB byte " +
                          std::to_string(slot * 2) + "): only a 100% overlap is allowed");
            GFM_CHECK(writer > reader || accumulationAllowed, where,
                      std::string(name) + ": iteration " + std::to_string(reader) + " reads " + operand +
                          " at UB byte " + std::to_string(slot * 2) + ", which iteration " + std::to_string(writer) +
                          " of the same instruction writes (overlap across iterations is not supported)");
        }
    }
}

template <typename T>
size_t LanesPerRepeat(const std::vector<uint8_t>& laneMask)
{
    size_t n = 0;
    for (uint8_t bit : laneMask) {
        n += bit;
    }
    return n;
}

template <typename T>
constexpr bool kAccumulates(Op op)
{
    return (op == Op::kAdd || op == Op::kSub || op == Op::kMul || op == Op::kMax || op == Op::kMin) &&
           (std::is_same<T, half>::value || std::is_same<T, int32_t>::value || std::is_same<T, float>::value);
}

// dst[i] = src0[i] op src1[i] over the lanes given by the offset lists (all read before any write).
template <typename T>
void Binary(Op op, const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b,
            const std::vector<uint32_t>& od, const std::vector<uint32_t>& oa, const std::vector<uint32_t>& ob,
            size_t perRepeat, bool zeroRepStride, const Where& where, const char* name)
{
    CheckTypes<T>(op, where, name);
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto ba = Operand(a, oa, gfm::kPipeV, s, false, where, name);
    const auto bb = Operand(b, ob, gfm::kPipeV, s, false, where, name);
    const auto bd = Operand(dst, od, gfm::kPipeV, s, true, where, name);
    CheckOverlap(bd, sizeof(T), ba, sizeof(T), perRepeat, false, where, name, "src0");
    CheckOverlap(bd, sizeof(T), bb, sizeof(T), perRepeat, zeroRepStride && kAccumulates<T>(op), where, name, "src1");
    // Iteration by iteration, each reading its lanes before writing them: exact for an in-place iteration and for
    // the accumulation the overlap rule allows (a later iteration sees what an earlier one wrote).
    std::vector<T> out(perRepeat);
    for (size_t first = 0; first < bd.size(); first += perRepeat) {
        const size_t last = std::min(bd.size(), first + perRepeat);
        for (size_t i = first; i < last; ++i) {
            out[i - first] =
                Arith<T>::Narrow(Apply(op, Arith<T>::Widen(LoadUb<T>(ba[i])), Arith<T>::Widen(LoadUb<T>(bb[i]))));
        }
        for (size_t i = first; i < last; ++i) {
            StoreUb<T>(bd[i], out[i - first]);
        }
    }
}

template <typename T>
void WithScalar(Op op, const LocalTensor<T>& dst, const LocalTensor<T>& a, T scalar, const std::vector<uint32_t>& od,
                const std::vector<uint32_t>& oa, size_t perRepeat, const Where& where, const char* name)
{
    CheckTypes<T>(op, where, name);
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto ba = Operand(a, oa, gfm::kPipeV, s, false, where, name);
    const auto bd = Operand(dst, od, gfm::kPipeV, s, true, where, name);
    CheckOverlap(bd, sizeof(T), ba, sizeof(T), perRepeat, false, where, name, "src");
    const auto w = Arith<T>::Widen(scalar);
    std::vector<T> out(bd.size());
    for (size_t i = 0; i < bd.size(); ++i) {
        out[i] = Arith<T>::Narrow(Apply(op, Arith<T>::Widen(LoadUb<T>(ba[i])), w));
    }
    for (size_t i = 0; i < bd.size(); ++i) {
        StoreUb<T>(bd[i], out[i]);
    }
}

enum class Fn { kAbs, kExp, kLn, kSqrt };

template <typename T>
void UnaryFn(Fn fn, const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count, const Where& where,
             const char* name)
{
    GFM_CHECK((std::is_same<T, float>::value || std::is_same<T, half>::value), where,
               std::string(name) + ": half or float only");
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto offsets = Contiguous(count, where);
    const auto bs = Operand(src, offsets, gfm::kPipeV, s, false, where, name);
    const auto bd = Operand(dst, offsets, gfm::kPipeV, s, true, where, name);
    CheckOverlap(bd, sizeof(T), bs, sizeof(T), Lanes<T>::kPerRepeat, false, where, name, "src");
    std::vector<T> out(bd.size());
    for (size_t i = 0; i < bd.size(); ++i) {
        const float x = static_cast<float>(LoadUb<T>(bs[i]));
        float y = x;
        switch (fn) {
            case Fn::kAbs: y = std::fabs(x); break;
            case Fn::kExp: y = std::exp(x); break;
            case Fn::kLn: y = std::log(x); break;
            case Fn::kSqrt: y = std::sqrt(x); break;
        }
        out[i] = T(y);
    }
    for (size_t i = 0; i < bd.size(); ++i) {
        StoreUb<T>(bd[i], out[i]);
    }
}

template <typename T>
struct NonDeduced {
    using type = T;
};

// Marks the granules a Duplicate writes with its value (see gfm::Track: equal unordered fills are benign).
struct Filling {
    template <typename T>
    explicit Filling(T value)
    {
        uint32_t bits = 0;
        std::memcpy(&bits, &value, sizeof(T) < 4 ? sizeof(T) : 4);
        gfm::Model().filling = true;
        gfm::Model().fillBits = bits | (static_cast<uint32_t>(sizeof(T)) << 28);
    }
    ~Filling() { gfm::Model().filling = false; }
};

}  // namespace model

// ---- vector arithmetic -------------------------------------------------------------------------------------------
// Level 2 (count) and level 0 (mask, repeatTimes, repeat parameters) forms; doc pages under Memory矢量计算/基础算术,
// 逻辑计算, 数据填充, 归约计算, 类型转换.

#define GFM_BINARY(NAME, OP)                                                                                         \
    template <typename T>                                                                                             \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, int32_t count,      \
                     Where where = GFM_HERE)                                                                          \
    {                                                                                                                 \
        const auto o = model::Contiguous(count, where);                                                              \
        model::Binary(OP, dst, a, b, o, o, o, model::Lanes<T>::kPerRepeat, false, where, #NAME);                     \
    }                                                                                                                 \
    template <typename T>                                                                                             \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, uint64_t mask,      \
                     uint8_t repeat, const BinaryRepeatParams& p, Where where = GFM_HERE)                             \
    {                                                                                                                 \
        GFM_CHECK(p.dstBlkStride != 0, where, #NAME ": dstBlkStride 0 is undefined");                              \
        const auto m = model::ContinuousMask<T>(mask, where);                                                        \
        model::Binary(OP, dst, a, b, model::Level0Offsets<T>(m, repeat, p.dstBlkStride, p.dstRepStride),             \
                      model::Level0Offsets<T>(m, repeat, p.src0BlkStride, p.src0RepStride),                          \
                      model::Level0Offsets<T>(m, repeat, p.src1BlkStride, p.src1RepStride),                          \
                      model::LanesPerRepeat<T>(m), p.src1RepStride == 0 || p.dstRepStride == 0, where, #NAME);       \
    }                                                                                                                 \
    template <typename T>                                                                                             \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b,                     \
                     const uint64_t mask[2], uint8_t repeat, const BinaryRepeatParams& p, Where where = GFM_HERE)     \
    {                                                                                                                 \
        GFM_CHECK(p.dstBlkStride != 0, where, #NAME ": dstBlkStride 0 is undefined");                              \
        const auto m = model::BitMask<T>(mask, where);                                                               \
        model::Binary(OP, dst, a, b, model::Level0Offsets<T>(m, repeat, p.dstBlkStride, p.dstRepStride),             \
                      model::Level0Offsets<T>(m, repeat, p.src0BlkStride, p.src0RepStride),                          \
                      model::Level0Offsets<T>(m, repeat, p.src1BlkStride, p.src1RepStride),                          \
                      model::LanesPerRepeat<T>(m), p.src1RepStride == 0 || p.dstRepStride == 0, where, #NAME);       \
    }

GFM_BINARY(Add, model::Op::kAdd)  // doc: 基础算术/Add.md
GFM_BINARY(Sub, model::Op::kSub)  // doc: 基础算术/Sub.md
GFM_BINARY(Mul, model::Op::kMul)  // doc: 基础算术/Mul.md
GFM_BINARY(Div, model::Op::kDiv)  // doc: 基础算术/Div.md
GFM_BINARY(And, model::Op::kAnd)  // doc: 逻辑计算/And.md (int16 / uint16)
GFM_BINARY(Or, model::Op::kOr)    // doc: 逻辑计算/Or.md (int16 / uint16)
#undef GFM_BINARY

#define GFM_SCALAR(NAME, OP)                                                                                         \
    template <typename T>                                                                                             \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& src,                                            \
                     const typename model::NonDeduced<T>::type& scalar, int32_t count, Where where = GFM_HERE)        \
    {                                                                                                                 \
        const auto o = model::Contiguous(count, where);                                                              \
        model::WithScalar(OP, dst, src, scalar, o, o, model::Lanes<T>::kPerRepeat, where, #NAME);                    \
    }                                                                                                                 \
    template <typename T>                                                                                             \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& src,                                            \
                     const typename model::NonDeduced<T>::type& scalar, uint64_t mask, uint8_t repeat,                \
                     const UnaryRepeatParams& p, Where where = GFM_HERE)                                              \
    {                                                                                                                 \
        GFM_CHECK(p.dstBlkStride != 0, where, #NAME ": dstBlkStride 0 is undefined");                              \
        const auto m = model::ContinuousMask<T>(mask, where);                                                        \
        model::WithScalar(OP, dst, src, scalar, model::Level0Offsets<T>(m, repeat, p.dstBlkStride, p.dstRepStride),  \
                          model::Level0Offsets<T>(m, repeat, p.srcBlkStride, p.srcRepStride),                        \
                          model::LanesPerRepeat<T>(m), where, #NAME);                                                \
    }

GFM_SCALAR(Adds, model::Op::kAdd)  // doc: 基础算术/Adds.md
GFM_SCALAR(Muls, model::Op::kMul)  // doc: 基础算术/Muls.md (int32: low 32 bits of the product)
GFM_SCALAR(Maxs, model::Op::kMax)  // doc: 基础算术/Maxs.md
GFM_SCALAR(Mins, model::Op::kMin)  // doc: 基础算术/Mins.md
#undef GFM_SCALAR

// doc: 基础算术/Abs.md, Exp.md, Ln.md, Sqrt.md (half, float; the model uses libm's fp32 functions).
template <typename T>
inline void Abs(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count, Where where = GFM_HERE)
{
    model::UnaryFn(model::Fn::kAbs, dst, src, count, where, "Abs");
}
template <typename T>
inline void Exp(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count, Where where = GFM_HERE)
{
    model::UnaryFn(model::Fn::kExp, dst, src, count, where, "Exp");
}
template <typename T>
inline void Ln(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count, Where where = GFM_HERE)
{
    model::UnaryFn(model::Fn::kLn, dst, src, count, where, "Ln");
}
template <typename T>
inline void Sqrt(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count, Where where = GFM_HERE)
{
    model::UnaryFn(model::Fn::kSqrt, dst, src, count, where, "Sqrt");
}

// doc: 逻辑计算/ShiftRight.md: logical for unsigned types, arithmetic for signed ones.
template <typename T>
inline void ShiftRight(const LocalTensor<T>& dst, const LocalTensor<T>& src,
                       const typename model::NonDeduced<T>::type& bits, int32_t count, Where where = GFM_HERE)
{
    static_assert(std::is_integral<T>::value, "ShiftRight: integer types");
    GFM_CHECK(bits >= 0 && static_cast<uint64_t>(bits) < 8 * sizeof(T), where, "ShiftRight: shift out of range");
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto o = model::Contiguous(count, where);
    const auto bs = model::Operand(src, o, gfm::kPipeV, s, false, where, "ShiftRight");
    const auto bd = model::Operand(dst, o, gfm::kPipeV, s, true, where, "ShiftRight");
    std::vector<T> out(bd.size());
    for (size_t i = 0; i < bd.size(); ++i) {
        out[i] = static_cast<T>(model::LoadUb<T>(bs[i]) >> bits);
    }
    for (size_t i = 0; i < bd.size(); ++i) {
        model::StoreUb<T>(bd[i], out[i]);
    }
}

// doc: 数据填充/Duplicate.md
template <typename T>
inline void Duplicate(const LocalTensor<T>& dst, const typename model::NonDeduced<T>::type& value, int32_t count,
                      Where where = GFM_HERE)
{
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const model::Filling filling(value);
    const auto bd = model::Operand(dst, model::Contiguous(count, where), gfm::kPipeV, s, true, where, "Duplicate");
    for (uint32_t b : bd) {
        model::StoreUb<T>(b, value);
    }
}
template <typename T>
inline void Duplicate(const LocalTensor<T>& dst, const typename model::NonDeduced<T>::type& value,
                      const uint64_t mask[2], uint8_t repeat, uint16_t dstBlkStride, uint8_t dstRepStride,
                      Where where = GFM_HERE)
{
    GFM_CHECK(dstBlkStride != 0, where, "Duplicate: dstBlkStride 0 is undefined");
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto o = model::Level0Offsets<T>(model::BitMask<T>(mask, where), repeat, dstBlkStride, dstRepStride);
    const model::Filling filling(value);
    for (uint32_t b : model::Operand(dst, o, gfm::kPipeV, s, true, where, "Duplicate")) {
        model::StoreUb<T>(b, value);
    }
}
template <typename T>
inline void Duplicate(const LocalTensor<T>& dst, const typename model::NonDeduced<T>::type& value, uint64_t mask,
                      uint8_t repeat, uint16_t dstBlkStride, uint8_t dstRepStride, Where where = GFM_HERE)
{
    GFM_CHECK(dstBlkStride != 0, where, "Duplicate: dstBlkStride 0 is undefined");
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto o = model::Level0Offsets<T>(model::ContinuousMask<T>(mask, where), repeat, dstBlkStride, dstRepStride);
    const model::Filling filling(value);
    for (uint32_t b : model::Operand(dst, o, gfm::kPipeV, s, true, where, "Duplicate")) {
        model::StoreUb<T>(b, value);
    }
}

// doc: 数据填充/Brcb.md: each repeat reads 8 consecutive elements of src and fills one 32-byte block of dst with
// each (block i of repeat r at (r * dstRepStride + i * dstBlkStride) blocks).
template <typename T>
inline void Brcb(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint8_t repeat, const BrcbRepeatParams& p,
                 Where where = GFM_HERE)
{
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "Brcb: 16- or 32-bit data");
    GFM_CHECK(repeat >= 1, where, "Brcb: repeatTimes must be at least 1");
    constexpr uint32_t per = 32 / sizeof(T);
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    std::vector<uint32_t> os, od;
    for (uint32_t r = 0; r < repeat; ++r) {
        for (uint32_t i = 0; i < 8; ++i) {
            for (uint32_t e = 0; e < per; ++e) {
                os.push_back(r * 8 + i);
                od.push_back((r * p.dstRepStride + i * p.dstBlkStride) * per + e);
            }
        }
    }
    const auto bs = model::Operand(src, os, gfm::kPipeV, s, false, where, "Brcb");
    const auto bd = model::Operand(dst, od, gfm::kPipeV, s, true, where, "Brcb");
    std::vector<T> out(bd.size());
    for (size_t i = 0; i < bd.size(); ++i) {
        out[i] = model::LoadUb<T>(bs[i]);
    }
    for (size_t i = 0; i < bd.size(); ++i) {
        model::StoreUb<T>(bd[i], out[i]);
    }
}

// doc: 归约计算/ReduceRepeat.md (WholeReduceSum before 9.1.0): per repeat, the sum of the masked lanes of src
// (blocks srcBlkStride apart, repeats srcRepStride blocks apart) to dst[r * dstRepStride] (unit: one element).
// The model sums lanes in order in fp32 (the hardware's reduction tree may round differently: see tolerances).
template <typename T>
inline void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t mask, int32_t repeat,
                           int32_t dstRepStride, int32_t srcBlkStride, int32_t srcRepStride, Where where = GFM_HERE)
{
    static_assert(std::is_same<T, float>::value || std::is_same<T, half>::value, "WholeReduceSum: half or float");
    model::CheckRepeat(repeat, where);
    GFM_CHECK(dstRepStride >= 0 && dstRepStride < 65536 && srcBlkStride >= 0 && srcBlkStride < 65536 &&
                   srcRepStride >= 0 && srcRepStride < 65536,
               where, "WholeReduceSum: stride outside 0..65535");
    const auto m = model::ContinuousMask<T>(static_cast<uint64_t>(mask), where);
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto os = model::Level0Offsets<T>(m, static_cast<uint32_t>(repeat), static_cast<uint32_t>(srcBlkStride),
                                            static_cast<uint32_t>(srcRepStride));
    std::vector<uint32_t> od;
    for (int32_t r = 0; r < repeat; ++r) {
        od.push_back(static_cast<uint32_t>(r * dstRepStride));
    }
    const auto bs = model::Operand(src, os, gfm::kPipeV, s, false, where, "WholeReduceSum");
    const auto bd = model::Operand(dst, od, gfm::kPipeV, s, true, where, "WholeReduceSum");
    const size_t lanes = bs.size() / (repeat > 0 ? static_cast<size_t>(repeat) : 1);
    std::vector<T> out(bd.size());
    for (size_t r = 0; r < bd.size(); ++r) {
        float sum = 0.0f;
        for (size_t l = 0; l < lanes; ++l) {
            sum += static_cast<float>(model::LoadUb<T>(bs[r * lanes + l]));
        }
        out[r] = T(sum);
    }
    for (size_t r = 0; r < bd.size(); ++r) {
        model::StoreUb<T>(bd[r], out[r]);
    }
}

// doc: 数据填充/CreateVecIndex.md: dst[i] = firstValue + i.
template <typename T>
inline void CreateVecIndex(const LocalTensor<T>& dst, const typename model::NonDeduced<T>::type& firstValue,
                           uint32_t count, Where where = GFM_HERE)
{
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto bd = model::Operand(dst, model::Contiguous(count, where), gfm::kPipeV, s, true, where, "CreateVecIndex");
    for (size_t i = 0; i < bd.size(); ++i) {
        model::StoreUb<T>(bd[i], model::Arith<T>::Narrow(model::Arith<T>::Widen(firstValue) + static_cast<int64_t>(i)));
    }
}

// doc: 类型转换/Cast.md, the Atlas A2 table: half/bfloat16_t -> float CAST_NONE (exact); float -> half CAST_RINT
// or CAST_NONE (= RINT when lossy); float -> bfloat16_t CAST_RINT (CAST_NONE not listed); int32_t -> float CAST_NONE
// (= RINT) or CAST_RINT. Only the pairs and modes the kernels use are modelled; others are refused.
template <typename D, typename S>
inline void Cast(const LocalTensor<D>& dst, const LocalTensor<S>& src, RoundMode mode, int32_t count,
                 Where where = GFM_HERE)
{
    constexpr bool widen16 = std::is_same<D, float>::value &&
                             (std::is_same<S, half>::value || std::is_same<S, bfloat16_t>::value);
    constexpr bool toHalf = std::is_same<D, half>::value && std::is_same<S, float>::value;
    constexpr bool toBf16 = std::is_same<D, bfloat16_t>::value && std::is_same<S, float>::value;
    constexpr bool fromInt = std::is_same<D, float>::value && std::is_same<S, int32_t>::value;
    static_assert(widen16 || toHalf || toBf16 || fromInt, "Cast: dtype pair not modelled");
    if (widen16) {
        GFM_CHECK(mode == RoundMode::CAST_NONE, where, "Cast 16-bit -> float: only CAST_NONE is listed for A2");
    } else if (toHalf || fromInt) {
        GFM_CHECK(mode == RoundMode::CAST_NONE || mode == RoundMode::CAST_RINT, where,
                   "Cast: the model serves CAST_NONE / CAST_RINT only");
    } else {
        GFM_CHECK(mode == RoundMode::CAST_RINT, where, "Cast float -> bfloat16_t: CAST_NONE is not listed for A2");
    }
    const uint32_t s = gfm::Begin(gfm::kPipeV);
    const auto o = model::Contiguous(count, where);
    const auto bs = model::Operand(src, o, gfm::kPipeV, s, false, where, "Cast");
    const auto bd = model::Operand(dst, o, gfm::kPipeV, s, true, where, "Cast");
    // Cast.md: the general overlap rule, and a widening cast over its own source may go wrong.
    model::CheckOverlap(bd, sizeof(D), bs, sizeof(S), 256 / std::max(sizeof(D), sizeof(S)), false, where, "Cast", "src");
    std::vector<D> out(bd.size());
    for (size_t i = 0; i < bd.size(); ++i) {
        if constexpr (fromInt) {
            out[i] = static_cast<float>(model::LoadUb<int32_t>(bs[i]));  // round to nearest even (x86 default)
        } else {
            out[i] = D(static_cast<float>(model::LoadUb<S>(bs[i])));
        }
    }
    for (size_t i = 0; i < bd.size(); ++i) {
        model::StoreUb<D>(bd[i], out[i]);
    }
}

// ---- data movement -------------------------------------------------------------------------------------------

namespace model {
inline void CheckGmAligned(const void* p, size_t element, const Where& where, const char* what)
{
    GFM_CHECK(reinterpret_cast<uintptr_t>(p) % element == 0, where,
               std::string(what) + ": GM address not aligned to the element size");
}
}  // namespace model

// doc: 数据搬运/DataCopy（GM与UB连续数据搬运）.md: GM -> UB on MTE2, `count` elements; the UB address 32-byte
// aligned, count * sizeof(T) a multiple of 32 bytes (otherwise the hardware silently drops the tail: refused here).
template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count, Where where = GFM_HERE)
{
    GFM_CHECK((count * sizeof(T)) % 32 == 0, where,
               "DataCopy GM->UB: count * sizeof(T) = " + std::to_string(count * sizeof(T)) +
                   " bytes is not a multiple of 32 (the copy would be cut to a multiple of 32)");
    model::CheckGmAligned(src.address_, sizeof(T), where, "DataCopy GM->UB");
    const uint32_t s = gfm::Begin(gfm::kPipeMte2);
    gfm::TrackGm(src.address_, static_cast<uint64_t>(count) * sizeof(T), gfm::kPipeMte2, s, false, where);
    const uint32_t base = dst.Resolve(0, count, where, "DataCopy GM->UB");
    GFM_CHECK(base % 32 == 0, where, "DataCopy GM->UB: UB address not 32-byte aligned");
    gfm::TrackUb(base, count * sizeof(T), gfm::kPipeMte2, s, true, where);
    std::memcpy(gfm::Model().ub + base, src.address_, count * sizeof(T));
}

// UB -> GM on MTE3, the same rules.
template <typename T>
inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count, Where where = GFM_HERE)
{
    GFM_CHECK((count * sizeof(T)) % 32 == 0, where,
               "DataCopy UB->GM: count * sizeof(T) = " + std::to_string(count * sizeof(T)) +
                   " bytes is not a multiple of 32 (the copy would be cut to a multiple of 32)");
    model::CheckGmAligned(dst.address_, sizeof(T), where, "DataCopy UB->GM");
    const uint32_t s = gfm::Begin(gfm::kPipeMte3);
    const uint32_t base = src.Resolve(0, count, where, "DataCopy UB->GM");
    GFM_CHECK(base % 32 == 0, where, "DataCopy UB->GM: UB address not 32-byte aligned");
    gfm::TrackUb(base, count * sizeof(T), gfm::kPipeMte3, s, false, where);
    gfm::TrackGm(dst.address_, static_cast<uint64_t>(count) * sizeof(T), gfm::kPipeMte3, s, true, where);
    std::memcpy(dst.address_, gfm::Model().ub + base, count * sizeof(T));
}

// doc: 数据搬运/DataCopyPad（GMToUB非对齐数据搬运）.md: blockCount blocks of blockLen bytes, GM blocks srcStride
// bytes apart (after each block's end), each landing on a 32-byte boundary in UB, dstStride 32-byte blocks apart.
// The hardware writes the whole of each block's last 32 bytes: with no left / right padding (all the model serves)
// the page's parameter notes and its second example say the dummy bytes after blockLen repeat the block's first
// element, whatever isPad says (paddingValue fills leftPadding / rightPadding only). So the rest of the 32 bytes is
// written on MTE2 (tracked as such) and holds that element: a kernel that expected the bytes it left there before
// the copy to survive fails here as it would on the device.
template <typename T>
inline void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p,
                        const DataCopyPadExtParams<T>& pad, Where where = GFM_HERE)
{
    GFM_CHECK(p.blockCount >= 1 && p.blockCount <= 4095, where, "DataCopyPad: blockCount outside 1..4095");
    GFM_CHECK(p.blockLen >= 1 && p.blockLen < (1u << 21), where, "DataCopyPad: blockLen outside 1..2^21-1 bytes");
    GFM_CHECK(p.blockLen % sizeof(T) == 0, where, "DataCopyPad: blockLen not a whole number of elements");
    GFM_CHECK(pad.leftPadding == 0 && pad.rightPadding == 0, where, "DataCopyPad: padding is not modelled");
    model::CheckGmAligned(src.address_, sizeof(T), where, "DataCopyPad GM->UB");
    const uint32_t s = gfm::Begin(gfm::kPipeMte2);
    const uint32_t blockUb = (p.blockLen + 31u) / 32u * 32u;
    const uint64_t span = static_cast<uint64_t>(p.blockCount - 1) * (blockUb + p.dstStride * 32u) + blockUb;
    const uint32_t base = dst.Resolve(0, span / sizeof(T), where, "DataCopyPad GM->UB");
    GFM_CHECK(base % 32 == 0, where, "DataCopyPad GM->UB: UB address not 32-byte aligned");
    for (uint32_t i = 0; i < p.blockCount; ++i) {
        const uint8_t* from =
            reinterpret_cast<const uint8_t*>(src.address_) + static_cast<uint64_t>(i) * (p.blockLen + p.srcStride);
        const uint32_t to = base + i * (blockUb + p.dstStride * 32u);
        gfm::TrackGm(from, p.blockLen, gfm::kPipeMte2, s, false, where);
        gfm::TrackUb(to, blockUb, gfm::kPipeMte2, s, true, where);
        std::memcpy(gfm::Model().ub + to, from, p.blockLen);
        for (uint32_t b = p.blockLen; b < blockUb; b += sizeof(T)) {
            std::memcpy(gfm::Model().ub + to + b, from, sizeof(T));
        }
    }
}

// doc: 数据搬运/DataCopyPad（UBToGM非对齐数据搬运）.md: the reverse; UB blocks srcStride 32-byte blocks apart, GM
// blocks dstStride bytes apart; only blockLen bytes of each reach GM.
template <typename T>
inline void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p,
                        Where where = GFM_HERE)
{
    GFM_CHECK(p.blockCount >= 1 && p.blockCount <= 4095, where, "DataCopyPad: blockCount outside 1..4095");
    GFM_CHECK(p.blockLen >= 1 && p.blockLen < (1u << 21), where, "DataCopyPad: blockLen outside 1..2^21-1 bytes");
    GFM_CHECK(p.blockLen % sizeof(T) == 0, where, "DataCopyPad: blockLen not a whole number of elements");
    model::CheckGmAligned(dst.address_, sizeof(T), where, "DataCopyPad UB->GM");
    const uint32_t s = gfm::Begin(gfm::kPipeMte3);
    const uint32_t blockUb = (p.blockLen + 31u) / 32u * 32u;
    const uint64_t span = static_cast<uint64_t>(p.blockCount - 1) * (blockUb + p.srcStride * 32u) + p.blockLen;
    const uint32_t base = src.Resolve(0, span / sizeof(T), where, "DataCopyPad UB->GM");
    GFM_CHECK(base % 32 == 0, where, "DataCopyPad UB->GM: UB address not 32-byte aligned");
    for (uint32_t i = 0; i < p.blockCount; ++i) {
        const uint32_t from = base + i * (blockUb + p.srcStride * 32u);
        uint8_t* to = reinterpret_cast<uint8_t*>(dst.address_) + static_cast<uint64_t>(i) * (p.blockLen + p.dstStride);
        gfm::TrackUb(from, p.blockLen, gfm::kPipeMte3, s, false, where);
        gfm::TrackGm(to, p.blockLen, gfm::kPipeMte3, s, true, where);
        std::memcpy(to, gfm::Model().ub + from, p.blockLen);
    }
}

}  // namespace AscendC

// doc: 基础API/工具接口 GetSysWorkSpacePtr: the workspace the Ascend C libraries use (Matmul messages).
inline GM_ADDR GetSysWorkSpacePtr() { return gfm::Launch().workspace; }

// The kernel-side tiling struct (CANN generates it from the op_host TilingData class): the harness defines
// GFM_TILING_TYPE to the op's struct, laid out by api_model/register/tilingdata_base.h.
#define GET_TILING_DATA(name, tilingPointer) \
    GFM_TILING_TYPE name;                    \
    std::memcpy(&name, tilingPointer, sizeof(name))
