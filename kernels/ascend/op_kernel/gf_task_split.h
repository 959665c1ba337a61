// How a kernel's tasks are shared out over the vector cores: contiguous ranges, one per core, either of equal
// task count or of equal cost. Plain C++ apart from the __aicore__ qualifier, so that the host-plan test
// (tests/ops/test_ascend_project.py) runs the very split the kernels run, for every released shape.
#pragma once

#include <cstdint>

#if !defined(__aicore__)
#define __aicore__
#endif

namespace gf {

// Tasks [TaskRangeBegin(core), TaskRangeBegin(core + 1)) of `tasks` go to vector core `core` of `cores`: counts
// differ by at most one between cores.
__aicore__ inline uint64_t EvenSplitBegin(uint64_t tasks, uint64_t core, uint64_t cores)
{
    return tasks * core / cores;
}

// The attention backward has two kinds of task, key tasks first (each of cost keyCost), then query tasks (each of
// cost queryCost). Core `core` takes the tasks that start in its share [total * core / cores, total * (core + 1)
// / cores) of the summed cost; this is the first task starting at or after `position`.
__aicore__ inline uint64_t FirstTaskFrom(uint64_t position, uint64_t keyTasks, uint64_t keyCost, uint64_t queryCost)
{
    const uint64_t keySpan = keyTasks * keyCost;
    if (position <= keySpan) {
        return (position + keyCost - 1) / keyCost;
    }
    return keyTasks + (position - keySpan + queryCost - 1) / queryCost;
}

__aicore__ inline uint64_t CostSplitBegin(uint64_t keyTasks, uint64_t keyCost, uint64_t queryTasks, uint64_t queryCost,
                                         uint64_t core, uint64_t cores)
{
    const uint64_t total = keyTasks * keyCost + queryTasks * queryCost;
    return FirstTaskFrom(total * core / cores, keyTasks, keyCost, queryCost);
}

}  // namespace gf
