// Misuses of the Ascend C API, one per scenario, each of which the functional model (kernels/ascend/api_model) must
// refuse with a message naming this file and the line of the offending call (// LINE marks it). Driven by
// tests/ops/test_ascend_model.py: `ascend_model_misuse <scenario>` prints "ok" or the model's error.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernel_operator.h"
#include "lib/activation/softmaxflashv2.h"

using namespace AscendC;

namespace {

std::vector<float> gInput(1024, 1.0f), gOutput(1024, 0.0f);

void Setup(int core = 0)
{
    gfm::State& m = gfm::Model();
    m.gm.clear();
    for (auto* v : {&gInput, &gOutput}) {
        gfm::GmAllocation a;
        a.base = reinterpret_cast<uint8_t*>(v->data());
        a.bytes = v->size() * sizeof(float);
        a.name = v == &gInput ? "input" : "output";
        if (v == &gOutput) {
            a.shadow.resize(a.bytes / gfm::kGmGranule);
        }
        m.gm.push_back(std::move(a));
    }
    m.StartCore(core);
}

void Run(const std::string& scenario)
{
    Setup();
    TPipe pipe;
    TQue<QuePosition::VECIN, 1> in;
    TQue<QuePosition::VECOUT, 1> out;
    TBuf<TPosition::VECCALC> calc;
    GlobalTensor<float> input, output;
    input.SetGlobalBuffer(gInput.data());
    output.SetGlobalBuffer(gOutput.data());
    if (scenario == "deque-without-enque") {
        pipe.InitBuffer(in, 1, 1024);
        LocalTensor<float> t = in.DeQue<float>();  // LINE
        (void)t;
    } else if (scenario == "use-after-free") {
        pipe.InitBuffer(in, 1, 1024);
        LocalTensor<float> t = in.AllocTensor<float>();
        DataCopy(t, input, 64);
        in.EnQue(t);
        t = in.DeQue<float>();
        in.FreeTensor(t);
        Adds(t, t, 1.0f, 64);  // LINE
    } else if (scenario == "alloc-beyond-buffers") {
        pipe.InitBuffer(in, 1, 1024);
        LocalTensor<float> a = in.AllocTensor<float>();
        LocalTensor<float> b = in.AllocTensor<float>();  // LINE
        (void)a;
        (void)b;
    } else if (scenario == "enque-beyond-depth") {
        pipe.InitBuffer(in, 2, 1024);
        in.EnQue(in.AllocTensor<float>());
        in.EnQue(in.AllocTensor<float>());  // LINE
    } else if (scenario == "ub-overflow") {
        pipe.InitBuffer(calc, 150 * 1024);
        pipe.InitBuffer(out, 1, 64 * 1024);  // LINE
    } else if (scenario == "ub-past-buffer-end") {
        pipe.InitBuffer(calc, 256);
        Duplicate(calc.Get<float>(), 0.0f, 72);  // LINE
    } else if (scenario == "datacopy-length-not-32-bytes") {
        pipe.InitBuffer(calc, 1024);
        DataCopy(calc.Get<float>(), input, 12);  // LINE
    } else if (scenario == "datacopy-ub-misaligned") {
        pipe.InitBuffer(calc, 1024);
        DataCopy(calc.Get<float>()[4], input, 16);  // LINE
    } else if (scenario == "gm-past-end") {
        pipe.InitBuffer(calc, 8192);
        DataCopy(calc.Get<float>(), input[1000], 64);  // LINE
    } else if (scenario == "datacopypad-block-count") {
        pipe.InitBuffer(calc, 1024);
        DataCopyPad(calc.Get<float>(), input, DataCopyExtParams{0, 4, 0, 0, 0}, DataCopyPadExtParams<float>{});  // LINE
    } else if (scenario == "mask-out-of-range") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Adds(t, t, 1.0f, 65, 1, UnaryRepeatParams(1, 1, 8, 8));  // LINE
    } else if (scenario == "repeat-out-of-range") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        WholeReduceSum(t, t, 64, 256, 1, 1, 8);  // LINE
    } else if (scenario == "vector-operand-misaligned") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Add(t[3], t, t, 64);  // LINE
    } else if (scenario == "wait-without-set") {
        WaitFlag<HardEvent::MTE2_V>(0);  // LINE
    } else if (scenario == "raw-without-barrier") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 64);
        Adds(t[64], t, 1.0f, 64);  // LINE
    } else if (scenario == "raw-with-barrier") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 64);
        PipeBarrier<PIPE_V>();
        Adds(t[64], t, 1.0f, 64);
    } else if (scenario == "mte2-then-vector-without-flag") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        DataCopy(t, input, 64);
        Adds(t, t, 1.0f, 64);  // LINE
    } else if (scenario == "mte2-then-vector-with-flag") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        DataCopy(t, input, 64);
        SetFlag<HardEvent::MTE2_V>(0);
        WaitFlag<HardEvent::MTE2_V>(0);
        Adds(t, t, 1.0f, 64);
    } else if (scenario == "vector-then-mte3-without-flag") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 64);
        DataCopy(output, t, 64);  // LINE
    } else if (scenario == "queue-hand-off") {
        pipe.InitBuffer(in, 1, 1024);
        pipe.InitBuffer(out, 1, 1024);
        LocalTensor<float> a = in.AllocTensor<float>();
        DataCopy(a, input, 64);
        in.EnQue(a);
        a = in.DeQue<float>();
        LocalTensor<float> b = out.AllocTensor<float>();
        Adds(b, a, 1.0f, 64);
        in.FreeTensor(a);
        out.EnQue(b);
        b = out.DeQue<float>();
        DataCopy(output, b, 64);
        out.FreeTensor(b);
        if (gOutput[0] != 2.0f) {
            gfm::Fail(std::source_location::current(), "queue-hand-off computed the wrong value");
        }
    } else if (scenario == "write-into-input") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 64);
        SetFlag<HardEvent::V_MTE3>(0);
        WaitFlag<HardEvent::V_MTE3>(0);
        DataCopy(input, t, 64);  // LINE
    } else if (scenario == "datacopypad-tail-while-vector-reads") {
        // V reads lanes 5..7 only (bit mask); DataCopyPad of 5 floats then writes the rest of that 32-byte block
        // with dummy data, so it needs the V_MTE2 flag although its blockLen never reaches those lanes.
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 64);
        SetFlag<HardEvent::V_MTE2>(0);  // orders the Duplicate before the copy, not the Add after it
        PipeBarrier<PIPE_V>();
        const uint64_t lanes5to7[2] = {0xE0, 0};
        Add(t[64], t, t, lanes5to7, 1, BinaryRepeatParams());
        WaitFlag<HardEvent::V_MTE2>(0);
        DataCopyPad(t, input, DataCopyExtParams{1, 5 * sizeof(float), 0, 0, 0}, DataCopyPadExtParams<float>{});  // LINE
    } else if (scenario == "datacopypad-tail-is-dummy") {
        // What was in the block before the copy does not survive: the page's dummy is the block's first element.
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 9.0f, 8);
        SetFlag<HardEvent::V_MTE2>(0);
        WaitFlag<HardEvent::V_MTE2>(0);
        gInput[0] = 3.0f;
        DataCopyPad(t, input, DataCopyExtParams{1, 5 * sizeof(float), 0, 0, 0}, DataCopyPadExtParams<float>{});
        const float* ub = t.Raw();
        const float want[8] = {3.0f, 1.0f, 1.0f, 1.0f, 1.0f, 3.0f, 3.0f, 3.0f};
        for (int i = 0; i < 8; ++i) {
            if (ub[i] != want[i]) {
                gfm::Fail(std::source_location::current(), "DataCopyPad left element " + std::to_string(i) +
                                                                 " = " + std::to_string(ub[i]));
            }
        }
    } else if (scenario == "softmax-expmax-over-inmax") {
        // expMax written over inMax: the page allows max / inMax to share space, not expMax / inMax.
        pipe.InitBuffer(calc, 8192);
        LocalTensor<float> t = calc.Get<float>();
        LocalTensor<float> scores = t, sum = t[512], max = t[576], inSum = t[640], inMax = t[704];
        Duplicate(t, 0.5f, 768);
        PipeBarrier<PIPE_V>();
        const SoftMaxShapeInfo shape = {8, 64, 8, 64};
        SoftmaxFlashV2<float, true>(scores, sum, max, scores, inMax, inSum, inMax,  // LINE
                                    t[1024].ReinterpretCast<uint8_t>(), SoftMaxTiling(), shape);
    } else if (scenario == "partial-overlap-in-iteration") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 128);
        PipeBarrier<PIPE_V>();
        Adds(t, t[8], 1.0f, 64);  // LINE
    } else if (scenario == "overlap-across-iterations") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        Duplicate(t, 1.0f, 256);
        PipeBarrier<PIPE_V>();
        Adds(t[64], t, 1.0f, 128);  // LINE
    } else if (scenario == "accumulation-over-iterations") {
        // The overlap the rule allows: dst = src1 with dstRepStride = src1RepStride = 0, so each iteration adds its
        // block of src0 to what the one before wrote: acc = 1 + 2 + 2 + 2 + 2.
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> t = calc.Get<float>();
        LocalTensor<float> acc = t[512];
        Duplicate(t, 2.0f, 256);
        Duplicate(acc, 1.0f, 64);
        PipeBarrier<PIPE_V>();
        Add(acc, t, acc, 64, 4, BinaryRepeatParams(1, 1, 1, 0, 8, 0));
        for (int i = 0; i < 64; ++i) {
            if (acc.Raw()[i] != 9.0f) {
                gfm::Fail(std::source_location::current(), "accumulation gave " + std::to_string(acc.Raw()[i]));
            }
        }
    } else if (scenario == "cast-narrowing-in-place") {
        // float -> half onto its own source: iteration 0 writes the first half of the 256 bytes it reads.
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> f = calc.Get<float>();
        Duplicate(f, 1.0f, 128);
        PipeBarrier<PIPE_V>();
        Cast(f.ReinterpretCast<half>(), f, RoundMode::CAST_RINT, 128);  // LINE
    } else if (scenario == "cast-bf16-none") {
        pipe.InitBuffer(calc, 4096);
        LocalTensor<float> f = calc.Get<float>();
        Duplicate(f, 1.0f, 64);
        PipeBarrier<PIPE_V>();
        Cast(calc.Get<bfloat16_t>()[512], f, RoundMode::CAST_NONE, 64);  // LINE
    } else {
        gfm::Fail(std::source_location::current(), "unknown scenario " + scenario);
    }
}

// The level-0 forms on distinct inputs, printed for tests/ops/test_ascend_model.py to compare with the mask, block
// stride and repeat stride rules worked out there from the documentation (src[i] = i, every dst filled with -1).
void Level0Listing()
{
    Setup();
    for (size_t i = 0; i < gInput.size(); ++i) {
        gInput[i] = static_cast<float>(i);
    }
    TPipe pipe;
    TBuf<TPosition::VECCALC> srcBuf, dstBuf;
    pipe.InitBuffer(srcBuf, 1024 * sizeof(float));
    pipe.InitBuffer(dstBuf, 3 * 256 * sizeof(float));
    GlobalTensor<float> input;
    input.SetGlobalBuffer(gInput.data());
    LocalTensor<float> src = srcBuf.Get<float>();
    LocalTensor<float> add = dstBuf.Get<float>(), brcb = add[256], reduce = add[512];
    DataCopy(src, input, 1024);
    Duplicate(add, -1.0f, 3 * 256);
    SetFlag<HardEvent::MTE2_V>(0);
    WaitFlag<HardEvent::MTE2_V>(0);
    PipeBarrier<PIPE_V>();
    // Lanes 0, 9, 17..23 and 63 of 64, two repeats; src0 every other block, 16 blocks a repeat; src1 block stride 0
    // (the first block of each repeat again), repeats 1 block apart; dst blocks 1 apart, repeats 9 apart.
    const uint64_t lanes[2] = {(1ull << 0) | (1ull << 9) | (0x7Full << 17) | (1ull << 63), 0};
    Add(add, src, src[512], lanes, 2, BinaryRepeatParams(1, 2, 0, 9, 16, 1));
    Brcb(brcb, src[8], 2, BrcbRepeatParams(2, 16));
    WholeReduceSum(reduce, src, 40, 3, 2, 2, 20);
    for (int i = 0; i < 3 * 256; ++i) {
        std::printf("%g\n", static_cast<double>(add.Raw()[i]));
    }
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc == 3 && std::strcmp(argv[1], "convert") == 0) {
        // Every binary16 pattern to fp32 and back; then fp32 values from stdin (one per line) to fp16 and bf16 bits.
        if (std::strcmp(argv[2], "half-roundtrip") == 0) {
            for (uint32_t h = 0; h < 65536; ++h) {
                const float f = gfm::HalfBitsToFloat(static_cast<uint16_t>(h));
                std::printf("%08x %04x\n", gfm::FloatBits(f), gfm::FloatToHalfBits(f));
            }
        } else {
            uint32_t bits;
            while (std::scanf("%x", &bits) == 1) {
                const float f = gfm::BitsFloat(bits);
                std::printf("%04x %04x\n", gfm::FloatToHalfBits(f), gfm::FloatToBf16Bits(f));
            }
        }
        return 0;
    }
    if (argc == 2 && std::strcmp(argv[1], "level0-listing") == 0) {
        Level0Listing();
        return 0;
    }
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <scenario>\n", argv[0]);
        return 2;
    }
    try {
        Run(argv[1]);
        if (!gfm::Model().flags.empty()) {
            std::printf("SetFlag never waited for\n");
            return 0;
        }
        std::printf("ok\n");
    } catch (const gfm::ModelError& error) {
        std::printf("%s\n", error.what());
    }
    return 0;
}
