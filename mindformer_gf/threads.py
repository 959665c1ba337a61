"""How many threads the computation uses: every core this process may run on, unless the user says otherwise.

One number for the three pools a run has: MindSpore's CPU kernels, this package's kernel pool (kernels/cpu/
parallel.cc) and OpenMP/BLAS (numpy, scikit-learn). The default is the size of the process' CPU affinity mask (what
`taskset`, cgroups or a batch scheduler grant it), not the machine's core count; `--threads N` on the `gf` commands,
or the environment variable GF_THREADS, overrides it.

    from mindformer_gf.threads import apply_threads
    apply_threads()        # before MindSpore runs anything; returns the count in use
"""

from __future__ import annotations

import argparse
import os

ENVIRONMENT_VARIABLE = "GF_THREADS"
# read by kernels/cpu/parallel.cc when its pool starts (first kernel call)
KERNEL_POOL_VARIABLE = "MINDFORMER_GF_NUM_THREADS"

_applied: int | None = None


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask; the machine's count where the OS has no such mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_threads(requested: int | None = None) -> int:
    """`requested` when given, else GF_THREADS when set, else `available_cores()`; refuses a count below 1."""
    if requested is None:
        text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if not text:
            return available_cores()
        try:
            requested = int(text)
        except ValueError:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}={text!r} is not a whole number of threads; unset it or set 1, 2, ..."
            ) from None
    if requested < 1:
        raise ValueError(f"a thread count must be at least 1, got {requested}")
    return int(requested)


def apply_threads(requested: int | None = None) -> int:
    """Size every thread pool of the process to `resolve_threads(requested)` and return that count.

    Call once, early: MindSpore accepts its CPU kernel thread count once per process, and the package's kernel pool
    reads its size when first used. A later call with another count changes only OpenMP/BLAS and the environment
    inherited by child processes.
    """
    global _applied
    threads = resolve_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ[KERNEL_POOL_VARIABLE] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if _applied is None:
        from mindspore.device_context.cpu import op_tuning

        try:
            op_tuning.threads_num(threads)
        except RuntimeError:
            pass  # the embedding program configured MindSpore's count itself: its choice stands
        _applied = threads
    return threads


def add_threads_argument(parser) -> None:
    """`--threads N` on a command that computes."""
    parser.add_argument(
        "--threads",
        type=int,
        default=argparse.SUPPRESS,  # a subcommand's parser must not reset a value given before it
        metavar="N",
        help=f"threads for MindSpore, the kernels and BLAS (default: ${ENVIRONMENT_VARIABLE}, else every core this "
        "process may use)",
    )
