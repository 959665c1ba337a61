// State of the functional model of one Atlas A2 (Ascend 910B) AI core pair as the kernels see it: the Unified
// Buffer of the vector core being run, the registered Global Memory allocations, and the pipe-ordering tracker.
//
// Every check failure throws gfm::ModelError with the kernel source file and line of the call that failed (each API
// call takes `gfm::Where where = GFM_HERE` as its last, defaulted argument: GCC evaluates __builtin_FILE/LINE of a
// default argument at the call site).
//
// The pipe-hazard tracker. The vector core issues instructions in program order from its scalar unit to
// independent pipes that run concurrently: S (scalar), V (vector), MTE2 (GM -> UB), MTE3 (UB -> GM); the cube
// core's products are a fifth, CUBE. Each pipe keeps a vector clock: clock[p][q] = the last instruction of pipe q
// that is known to have completed before the next instruction of p starts. What orders two instructions:
//   - the same pipe, for S, MTE2, MTE3 and CUBE (in-order pipes): always;
//   - the same pipe V: only a PipeBarrier<PIPE_V> between them (the kernels' own rule, gf_tile_ops.h: vector
//     instructions are pipelined, so one that reads what the one before wrote needs the barrier);
//   - different pipes: SetFlag<SRC_DST>(id) after the first and a WaitFlag<SRC_DST>(id) before the second (which
//     TQue EnQue / DeQue and AllocTensor / FreeTensor issue for their positions), or PipeBarrier<PIPE_ALL>.
//   - a synchronous Matmul IterateAll: the cube starts with what the scalar pipe knows and everything issued after
//     the call returns is ordered after the cube's accesses.
// Every element of UB (4-byte granules) and every 32-byte block of tracked GM keeps its last writer (pipe, number,
// source line) and per pipe its last reader; an access that is not ordered after the conflicting earlier one
// (read after write, write after read, write after write) is an error even though the sequential model computes
// the right numbers. Across cores nothing is ordered: GM written by one core and touched by another is an error.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <source_location>
#include <string>
#include <vector>

namespace gfm {

// The call site of an API call: every API function takes `gfm::Where where = GFM_HERE` as its last argument, which
// C++20 evaluates at the caller (std::source_location::current() in a default argument).
using Where = std::source_location;
#define GFM_HERE std::source_location::current()

class ModelError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

inline std::string BaseName(const char* file)
{
    const char* slash = std::strrchr(file, '/');
    return slash ? slash + 1 : file;
}

[[noreturn]] inline void Fail(const Where& where, const std::string& what)
{
    throw ModelError(BaseName(where.file_name()) + ":" + std::to_string(where.line()) + ": " + what);
}

// The message is built only when the check fails (these checks run on every element an instruction touches).
#define GFM_CHECK(condition, where, ...)          \
    do {                                          \
        if (!(condition)) {                       \
            ::gfm::Fail((where), __VA_ARGS__);    \
        }                                         \
    } while (0)

// ---- memories ------------------------------------------------------------------------------------------------

// 910B: 192 KiB Unified Buffer per vector core (the plan's kUnifiedBufferBytes; CANN platform data for ascend910b).
constexpr uint32_t kUbBytes = 192 * 1024;
constexpr uint32_t kUbGranule = 4;  // hazard-tracking granule in UB
constexpr uint32_t kGmGranule = 32;

enum Pipe : int { kPipeS = 0, kPipeV = 1, kPipeMte2 = 2, kPipeMte3 = 3, kPipeCube = 4, kPipeCount = 5 };

inline const char* PipeName(int p)
{
    static const char* names[] = {"S", "V", "MTE2", "MTE3", "CUBE"};
    return names[p];
}

struct Access {  // one tracked granule
    uint32_t writeSeq = 0;
    int8_t writePipe = -1;
    int16_t writeCore = -1;
    unsigned writeLine = 0;
    const char* writeFile = nullptr;
    uint32_t readSeq[kPipeCount] = {0, 0, 0, 0, 0};
    unsigned readLine[kPipeCount] = {0, 0, 0, 0, 0};
    uint64_t readCores = 0;  // bit per vector core that read it (GM only)
    uint32_t writeMask = 0;
    int16_t lastCore = -1;
    bool filled = false;     // last written by a Duplicate of the value fillBits
    uint32_t fillBits = 0;   // the core whose pipe history writeSeq / readSeq hold (GM only)  // bytes of the 32-byte granule writeCore wrote (GM only: DataCopyPad writes bytes)
};

struct GmAllocation {
    uint8_t* base = nullptr;
    uint64_t bytes = 0;
    std::string name;
    int ownerCore = -1;  // >= 0: only that vector core may touch it (its workspace slice)
    std::vector<Access> shadow;
};

struct Snapshot {
    uint32_t clock[kPipeCount] = {0, 0, 0, 0, 0};
};

struct FlagRecord {
    int src, dst, id;
    Snapshot snap;
};

struct State {
    uint8_t ub[kUbBytes];
    Access ubShadow[kUbBytes / kUbGranule];
    std::vector<GmAllocation> gm;
    int core = 0;
    int vectorCores = 1;
    uint32_t seq[kPipeCount] = {0, 0, 0, 0, 0};
    uint32_t clock[kPipeCount][kPipeCount] = {};
    std::vector<FlagRecord> flags;
    bool hazardChecks = true;
    bool filling = false;  // the instruction being tracked is a Duplicate of fillBits
    uint32_t fillBits = 0;
    uint64_t ubPeakBytes = 0;
    uint64_t instructions = 0;

    void StartCore(int c)
    {
        core = c;
        std::memset(ub, 0xFF, sizeof(ub));  // NaN bytes: a read of UB nothing wrote shows up in the results
        for (auto& a : ubShadow) {
            a = Access();
        }
        std::memset(seq, 0, sizeof(seq));
        std::memset(clock, 0, sizeof(clock));
        flags.clear();
    }
};

inline State* const gState = new State();
inline State& Model() { return *gState; }

// ---- pipe ordering ---------------------------------------------------------------------------------------------

// A new instruction on pipe p: returns its number. In-order pipes see all their earlier instructions completed.
inline uint32_t Begin(int p)
{
    State& m = Model();
    const uint32_t s = ++m.seq[p];
    if (p != kPipeV) {
        m.clock[p][p] = s - 1;
    }
    ++m.instructions;
    return s;
}

inline Snapshot SnapshotOf(int p)
{
    State& m = Model();
    Snapshot snap;
    for (int q = 0; q < kPipeCount; ++q) {
        snap.clock[q] = m.clock[p][q];
    }
    snap.clock[p] = m.seq[p];  // a flag set on p fires after everything issued to p before it
    return snap;
}

inline void Join(int p, const Snapshot& snap)
{
    State& m = Model();
    for (int q = 0; q < kPipeCount; ++q) {
        m.clock[p][q] = std::max(m.clock[p][q], snap.clock[q]);
    }
}

inline void Barrier(int p)
{
    State& m = Model();
    m.clock[p][p] = m.seq[p];
}

inline void BarrierAll()
{
    State& m = Model();
    Snapshot all;
    for (int q = 0; q < kPipeCount; ++q) {
        all.clock[q] = m.seq[q];
    }
    for (int p = 0; p < kPipeCount; ++p) {
        Join(p, all);
    }
}

inline std::string Located(const char* file, unsigned line)
{
    return file ? BaseName(file) + ":" + std::to_string(line) : std::string("?");
}

// Check and record an access of one granule by instruction `s` of pipe p.
inline void Track(Access& a, int p, uint32_t s, bool write, const Where& where, const char* memory, uint64_t offset)
{
    State& m = Model();
    if (m.hazardChecks) {
        // Two unordered fills of the same value leave the same bytes whichever lands last: not a hazard.
        const bool sameFill = write && m.filling && a.filled && a.fillBits == m.fillBits;
        if (a.writeSeq != 0 && !(a.writePipe == p && a.writeSeq == s) && !sameFill &&
            a.writeSeq > m.clock[p][static_cast<int>(a.writePipe)]) {
            Fail(where, std::string("pipe hazard: ") + (write ? "write" : "read") + " on " + PipeName(p) + " of " +
                            memory + " byte " + std::to_string(offset) + " written on " + PipeName(a.writePipe) +
                            " at " + Located(a.writeFile, a.writeLine) +
                            " with no ordering between them (queue hand-off, SetFlag/WaitFlag or PipeBarrier)");
        }
        if (write) {
            for (int q = 0; q < kPipeCount; ++q) {
                if (a.readSeq[q] != 0 && !(q == p && a.readSeq[q] == s) && a.readSeq[q] > m.clock[p][q]) {
                    Fail(where, std::string("pipe hazard: write on ") + PipeName(p) + " of " + memory + " byte " +
                                    std::to_string(offset) + " still being read on " + PipeName(q) + " (read at line " +
                                    std::to_string(a.readLine[q]) + ") with no ordering between them");
                }
            }
        }
    }
    if (write) {
        a.writeSeq = s;
        a.writePipe = static_cast<int8_t>(p);
        a.filled = m.filling;
        a.fillBits = m.fillBits;
        a.writeFile = where.file_name();
        a.writeLine = where.line();
    } else {
        a.readSeq[p] = s;
        a.readLine[p] = where.line();
    }
}

inline void TrackUb(uint32_t byteOffset, uint32_t bytes, int p, uint32_t s, bool write, const Where& where)
{
    State& m = Model();
    const uint32_t first = byteOffset / kUbGranule;
    const uint32_t last = (byteOffset + bytes - 1) / kUbGranule;
    for (uint32_t g = first; g <= last; ++g) {
        Track(m.ubShadow[g], p, s, write, where, "UB", static_cast<uint64_t>(g) * kUbGranule);
    }
}

// ---- global memory ---------------------------------------------------------------------------------------------

inline GmAllocation* FindGm(const void* address)
{
    State& m = Model();
    const uint8_t* p = static_cast<const uint8_t*>(address);
    for (auto& a : m.gm) {
        if (p >= a.base && p < a.base + a.bytes) {
            return &a;
        }
    }
    return nullptr;
}

// Bounds, ownership and ordering of a GM access of [address, address + bytes) by pipe p.
inline void TrackGm(const void* address, uint64_t bytes, int p, uint32_t s, bool write, const Where& where)
{
    if (bytes == 0) {
        return;
    }
    State& m = Model();
    GmAllocation* a = FindGm(address);
    GFM_CHECK(a != nullptr, where, "GM access outside every allocation the launch passed");
    const uint64_t offset = static_cast<const uint8_t*>(address) - a->base;
    GFM_CHECK(offset + bytes <= a->bytes, where,
          "GM access past the end of '" + a->name + "': bytes [" + std::to_string(offset) + ", " +
              std::to_string(offset + bytes) + ") of " + std::to_string(a->bytes));
    GFM_CHECK(a->ownerCore < 0 || a->ownerCore == m.core, where,
          "vector core " + std::to_string(m.core) + " touches '" + a->name + "', which belongs to vector core " +
              std::to_string(a->ownerCore));
    // An input (registered without a shadow) is the caller's tensor: a kernel that writes it corrupts what the
    // framework hands to later operators, and the comparison of the outputs would not see it.
    GFM_CHECK(!write || !a->shadow.empty(), where,
              "GM write into '" + a->name + "', which the launch passed as an input the kernel only reads");
    if (a->shadow.empty()) {
        return;  // an input nothing writes: bounds only
    }
    const uint64_t first = offset / kGmGranule;
    const uint64_t last = (offset + bytes - 1) / kGmGranule;
    const uint64_t me = 1ull << m.core;
    for (uint64_t g = first; g <= last; ++g) {
        Access& x = a->shadow[g];
        const uint64_t lo = std::max<uint64_t>(offset, g * kGmGranule) - g * kGmGranule;
        const uint64_t hi = std::min<uint64_t>(offset + bytes, (g + 1) * kGmGranule) - g * kGmGranule;
        const uint32_t mask = static_cast<uint32_t>(((hi - lo) >= 32 ? ~0ull : ((1ull << (hi - lo)) - 1)) << lo);
        if (m.hazardChecks) {
            if (x.writeCore >= 0 && x.writeCore != m.core && (x.writeMask & mask) != 0) {
                Fail(where, "cross-core race on '" + a->name + "' byte " + std::to_string(g * kGmGranule + lo) +
                                ": written by vector core " + std::to_string(x.writeCore) + " at " +
                                Located(x.writeFile, x.writeLine) + ", now touched by vector core " +
                                std::to_string(m.core) + " with no ordering between cores in one launch");
            }
            if (write && (x.readCores & ~me) != 0) {
                Fail(where, "cross-core race on '" + a->name + "' byte " + std::to_string(g * kGmGranule) +
                                ": read by another vector core, now written by vector core " + std::to_string(m.core));
            }
        }
        if (x.lastCore != m.core) {  // pipe ordering is per core: forget another core's instructions
            x.lastCore = static_cast<int16_t>(m.core);
            x.writeSeq = 0;
            for (auto& r : x.readSeq) {
                r = 0;
            }
        }
        if (write) {
            if (x.writeCore != m.core) {
                x.writeCore = static_cast<int16_t>(m.core);
                x.writeMask = 0;
            }
            x.writeMask |= mask;
        } else {
            x.readCores |= me;
        }
        Track(x, p, s, write, where, a->name.c_str(), g * kGmGranule);
    }
}

}  // namespace gfm
