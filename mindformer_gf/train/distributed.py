"""Data parallelism through MindSpore's launcher: `msrun` starts one process per device and sets MS_ROLE/
MS_WORKER_NUM; `init_distributed` then joins the collective group (HCCL on Ascend, MCCL on CPU).

Launch (one machine, 8 devices):
    msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 --log_dir=logs \
        --join=True $(which gf) pretrain --config pretrain.yaml
Several machines: the same on each, with --worker_num = total devices, --local_worker_num = devices on that
machine, --node_rank = the machine's index, --master_addr = machine 0's reachable address.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelContext:
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_msrun() -> bool:
    """msrun runs the script in a scheduler process (MS_SCHED) and one process per worker (MS_WORKER); both must
    join the cluster, the scheduler serving as its meta server."""
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and "MS_WORKER_NUM" in os.environ


class LaunchError(RuntimeError):
    """msrun was started in a way this process cannot take its share from (reported as a user error)."""


_CONTEXT: ParallelContext | None = None


def init_distributed() -> ParallelContext:
    """Join the process group when started by msrun with more than one worker; a single process otherwise.

    Sets data-parallel mode. Idempotent: later calls return the same context.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_msrun():
        _CONTEXT = ParallelContext()
        return _CONTEXT
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=False)
    _CONTEXT = ParallelContext(rank=get_rank(), world_size=get_group_size())
    return _CONTEXT


def launched_context() -> ParallelContext | None:
    """This process's rank and world size as msrun assigned them, WITHOUT joining the collective group: for work
    whose ranks never communicate (inference, each rank its own share). The joined group's context once
    `init_distributed` ran; None in msrun's scheduler process, which has no share of the work."""
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_msrun():
        return ParallelContext()
    if os.environ["MS_ROLE"] == "MS_SCHED":
        return None
    if "RANK_ID" not in os.environ:
        # msrun numbers the workers itself only on one machine or when told each machine's index
        raise LaunchError("msrun over several machines needs --node_rank=<machine index> on each machine")
    return ParallelContext(rank=int(os.environ["RANK_ID"]), world_size=int(os.environ["MS_WORKER_NUM"]))


def broadcast_weights(model: object) -> None:
    """Every rank of the joined group takes rank 0's parameters of `model` (which has `state_dict` and
    `load_weights`, as the package's models do): one sum over the ranks to which the others add zeros, so the values
    arrive unchanged. A collective operation: every rank calls it at the same point."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    context = init_distributed()
    if not context.distributed:
        return
    weights = model.state_dict()
    names = sorted(weights)
    flat = np.concatenate([np.asarray(weights[n], np.float32).ravel() for n in names])
    if not context.is_main:
        flat[:] = 0.0

    class SumOverRanks(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.all_reduce = ops.AllReduce()

        def construct(self, values: ms.Tensor) -> ms.Tensor:
            return self.all_reduce(values)

    summed = SumOverRanks()(ms.Tensor(flat)).asnumpy()
    offset, received = 0, {}
    for name in names:
        size = int(np.prod(weights[name].shape))
        received[name] = summed[offset : offset + size].reshape(weights[name].shape)
        offset += size
    model.load_weights(received)
