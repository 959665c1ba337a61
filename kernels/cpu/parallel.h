// Work sharing across the machine's cores for the kernels in this library.
//
// std::thread rather than OpenMP: MindSpore's CPU runtime ships its own thread pool and may launch two kernels at
// once from different threads, and mixing a second OpenMP runtime into its process is asking for oversubscription
// and libgomp/libomp clashes. A single persistent pool, entered by one launch at a time, avoids both.
#pragma once

#include <cstdint>
#include <functional>

namespace mfgf {

// Threads the pool uses (the caller's thread counts as one). Defaults to the CPUs this process may run on;
// MINDFORMER_GF_NUM_THREADS overrides it.
int num_threads();

// Runs task(0) .. task(count - 1), spread dynamically over the pool; returns when all are done. Tasks must be
// independent. If another launch already holds the pool, the caller runs its tasks alone instead of waiting.
void parallel_for(int64_t count, const std::function<void(int64_t)>& task);

}  // namespace mfgf
