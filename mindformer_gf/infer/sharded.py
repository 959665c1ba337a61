"""Inference sharded over the ranks msrun starts: each rank computes a share of the cells balanced by cost, writes it
as a shard, and rank 0 merges the shards back into input order, so the files written are those of one process, bit
for bit, whatever the number of ranks and on any host.

    costs = cell_costs(lengths, "genes")              # "genes_squared" for perturbation (one forward per gene)
    batches = length_sorted_batches(lengths, buckets, batch_size)     # the plan of ONE process, from ALL the cells
    job = ShardedInference(costs, output_dir, prefix, settings={...}, groups=[p for _, p in batches])
    outputs = job.run(forward_share(forward, dataset, rows, batches, batch_size))
    if outputs is not None:                           # rank 0 (or the only process): every cell, input order
        files = write_outputs(outputs)
        job.finish(files)                             # {prefix}_run.json, shards removed

`compute(positions, advance)` (a rank's cells: whole groups) returns a list of outputs for the cells at
`positions` (ascending), each an array [len(positions), ...] or a list of per-cell arrays (ragged, e.g. per-gene
states), and calls `advance(n)` as cells finish. Ranks never communicate: they share a directory
(`{prefix}_shards/` beside the outputs; on several machines it must be a filesystem all of them see). Rank and world
size come from `train.distributed.launched_context`. The evaluation passes of a data-parallel training run
(`gf classify` under msrun) shard the same way: there the other ranks write their own outputs into a scratch
directory (`shards_meet_in`) and their shards beside rank 0's outputs.

- Ranks share out whole groups of cells, never single cells: a group is a batch of the plan one process makes
  from all the cells (which cells share a batch, in which rows, at which padded width), or for perturbation a
  window of cells whose originals and perturbed copies are batched together. A cell's outputs may differ in the
  last bits with the other cells of its batch (CPU matrix kernels take other paths for other row counts and
  offsets), so a rank that re-batched its own cells would write other bits than one process.
- The share is a pure function of (costs, groups, world_size): greedy longest-processing-time over the groups'
  costs (`partition_by_cost`; a group costs the sum of its cells').
- A shard is `rank{r}-of-{w}.npz`, written atomically, stamped with a fingerprint of the settings, the inputs, the
  cells and their groups; `resume=True` keeps every shard whose fingerprint matches and computes only the missing ones.
- A failing rank leaves `rank{r}.error.json` (its message) and exits non-zero (msrun then stops the others); rank 0
  raises that message, and raises when a rank shows no progress for `timeout` seconds.
- Rank 0 shows one progress bar over all cells (its own and the others', read from their progress files); the
  other ranks print a progress line now and then into their msrun log.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf import __version__
from mindformer_gf.data import read_cells
from mindformer_gf.infer.batches import Batches, run_forward
from mindformer_gf.io import atomic_file, read_json, write_json
from mindformer_gf.train.distributed import ParallelContext, launched_context

COST_MODELS = ("genes", "genes_squared")
POLL_SECONDS = 0.2
Outputs = list[Any]  # one entry per output: an array [cells, ...] or a list of per-cell arrays


# (this rank's output root, rank 0's): see shards_meet_in
_MEETING: tuple[Path, Path] | None = None


@contextmanager
def shards_meet_in(own_root: str | os.PathLike, main_root: str | os.PathLike) -> Iterator[None]:
    """Within the block, a pass whose outputs would go under `own_root` puts its shards under `main_root` (the same
    relative path) instead: a non-zero rank of a data-parallel training run writes its outputs into a scratch
    directory that nobody reads, while its evaluation shards must go where rank 0 merges them."""
    global _MEETING
    previous, _MEETING = _MEETING, (Path(own_root).resolve(), Path(main_root).resolve())
    try:
        yield
    finally:
        _MEETING = previous


def meeting_dir(path: str | os.PathLike) -> Path:
    """Where the shards of a pass with outputs in `path` go: `path` itself, or its place under rank 0's root."""
    path = Path(path)
    if _MEETING is not None:
        own, main = _MEETING
        resolved = path.resolve()
        if resolved.is_relative_to(own):
            return main / resolved.relative_to(own)
    return path


def cell_costs(lengths: Sequence[int] | np.ndarray, cost_model: str = "genes") -> np.ndarray:
    """Work per cell: its number of genes (one forward pass: the embeddings) or genes squared (one forward pass per
    gene of the cell, each over all its genes: in silico perturbation)."""
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model {cost_model!r} is not one of {COST_MODELS}")
    lengths = np.asarray(lengths, np.float64)
    return lengths**2 if cost_model == "genes_squared" else lengths


def partition_by_cost(costs: Sequence[float] | np.ndarray, world_size: int) -> list[np.ndarray]:
    """Cell positions of each rank (ascending): greedy longest-processing-time. Cells in descending cost (ties: lower
    position first) each go to the rank with the least cost so far (ties: lower rank). Its largest share is within
    4/3 of the best possible, and it depends on nothing but (costs, world_size), so every rank computes the same."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    costs = np.asarray(costs, np.float64)
    loads = np.zeros(world_size)
    owner = np.empty(costs.size, np.int64)
    for position in np.argsort(-costs, kind="stable"):
        rank = int(np.argmin(loads))  # argmin returns the lowest rank among equals
        owner[position] = rank
        loads[rank] += costs[position]
    return [np.flatnonzero(owner == rank) for rank in range(world_size)]


def partition_groups(
    costs: Sequence[float] | np.ndarray, groups: Sequence[np.ndarray], world_size: int
) -> list[list[int]]:
    """The groups (indices into `groups`, ascending) of each rank: `partition_by_cost` over the groups' costs."""
    costs = np.asarray(costs, np.float64)
    group_costs = np.asarray([costs[np.asarray(g, np.int64)].sum() for g in groups], np.float64)
    return [share.tolist() for share in partition_by_cost(group_costs, world_size)]


def check_groups(groups: Sequence[np.ndarray], total: int) -> list[np.ndarray]:
    """`groups` as int arrays, each non-empty, together holding every position below `total` exactly once."""
    groups = [np.asarray(g, np.int64).reshape(-1) for g in groups]
    seen = np.zeros(total, np.int64)
    for group in groups:
        if group.size == 0 or group.min() < 0 or group.max() >= total:
            raise ValueError(f"a group of cells is empty or holds a position outside 0..{total - 1}")
        np.add.at(seen, group, 1)
    if not (seen == 1).all():
        raise ValueError(f"the groups must hold each of the {total} cells exactly once")
    return groups


def batches_within(batches: Batches, positions: np.ndarray) -> Batches:
    """The batches of a plan whose cells are at `positions` (a rank's share: whole batches), in plan order, their
    cells renumbered as indices into `positions`; a batch cut by the share is an error (the groups of the job and
    the plan of its compute disagree)."""
    positions = np.asarray(positions, np.int64)
    index = {int(p): i for i, p in enumerate(positions)}
    local: Batches = []
    for width, members in batches:
        inside = [index.get(int(m)) for m in members]
        if all(i is None for i in inside):
            continue
        if any(i is None for i in inside):
            raise RuntimeError("a rank's share cuts a batch of the plan: shard by the plan's batches (groups)")
        local.append((width, np.asarray(inside, np.int64)))
    if sum(m.size for _, m in local) != positions.size:
        raise RuntimeError("a rank's share holds cells that no batch of the plan holds")
    return local


def forward_share(
    forward: Callable[..., Any],
    dataset: Any,
    rows: np.ndarray,
    batches: Batches,
    batch_size: int,
    pad_token_id: int = 0,
    extra_inputs: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]] | None = None,
    check_cells: Callable[[list[np.ndarray]], None] | None = None,
) -> Callable[[np.ndarray, Callable[[int], None]], Outputs]:
    """The `compute` of a ShardedInference that runs `forward` (see `infer.batches.run_forward`) over the dataset
    rows `rows[positions]`, batch by batch as `batches` says: the plan one process makes from every cell
    (`length_sorted_batches` of all of `rows`), whose batches are the job's groups. A rank thus runs exactly the
    batches one process runs, and its cells' outputs are that process's bit for bit. `check_cells(cells)` may
    refuse a rank's cells before any forward."""

    def compute(positions: np.ndarray, advance: Callable[[int], None]) -> Outputs:
        mine = batches_within(batches, positions)
        cells = read_cells(dataset, np.asarray(rows)[positions])
        if check_cells is not None:
            check_cells(cells)
        return run_forward(
            forward,
            cells,
            batch_size,
            None,
            extra_inputs,
            pad_token_id,
            progress=False,
            on_batch=advance,
            batches=mine,
        )

    return compute


def merge_shards(total: int, shards: Sequence[tuple[np.ndarray, Outputs]]) -> Outputs:
    """The outputs of every cell in input order from (positions, outputs) of each shard."""
    seen = np.zeros(total, np.int64)
    for positions, _ in shards:
        np.add.at(seen, positions, 1)
    if not (seen == 1).all():
        raise RuntimeError(
            f"shards do not cover every cell exactly once ({int((seen == 0).sum())} missing, "
            f"{int((seen > 1).sum())} repeated)"
        )
    shards = [(positions, outputs) for positions, outputs in shards if positions.size]
    merged: Outputs = []
    for k, sample in enumerate(shards[0][1]):
        if isinstance(sample, np.ndarray):
            column = np.zeros((total, *sample.shape[1:]), sample.dtype)
            for positions, outputs in shards:
                column[positions] = outputs[k]
        else:
            column = [None] * total
            for positions, outputs in shards:
                for position, value in zip(positions, outputs[k], strict=True):
                    column[position] = value
        merged.append(column)
    return merged


def fingerprint(
    settings: Mapping[str, Any], costs: np.ndarray, world_size: int, groups: Sequence[np.ndarray] = ()
) -> str:
    """What a shard must match to be reused: the settings (with input stamps), every cell's cost, the world size,
    and the groups of cells (the batch plan)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(costs, np.float64).tobytes())
    digest.update(str(world_size).encode())
    for group in groups:
        digest.update(np.ascontiguousarray(group, np.int64).tobytes() + b"|")
    return digest.hexdigest()[:32]


def path_stamp(path: str | os.PathLike | None) -> list[Any] | None:
    """(name, size, modification time) of every file under `path`: a rerun on changed inputs then matches no old
    shard."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def dataset_location(dataset: Any) -> str | None:
    """Where a loaded dataset's rows live: the folder of its Arrow files (None for one built in memory)."""
    files = getattr(dataset, "cache_files", None) or []
    return str(Path(files[0]["filename"]).parent) if files else None


def input_stamps(model_dir: str | os.PathLike | None, dataset: Any) -> dict[str, Any]:
    """The identity of a pass's inputs for shard fingerprints: the model's and the dataset's files."""
    location = dataset_location(dataset)
    return {
        "model": path_stamp(model_dir),
        "dataset": path_stamp(location) if location else getattr(dataset, "_fingerprint", None),
    }


def save_shard(path: Path, positions: np.ndarray, outputs: Outputs, meta: Mapping[str, Any]) -> Path:
    """Atomically: positions, outputs (ragged ones as concatenated values + offsets) and `meta` as JSON."""
    arrays: dict[str, np.ndarray] = {"positions": np.asarray(positions, np.int64)}
    for k, output in enumerate(outputs):
        if isinstance(output, np.ndarray):
            arrays[f"out{k}"] = output
        else:
            offsets = np.cumsum([0] + [len(v) for v in output])
            values = np.concatenate(output) if len(output) else np.zeros((0,))
            arrays[f"ragged{k}_values"], arrays[f"ragged{k}_offsets"] = values, offsets
    arrays["meta"] = np.asarray(json.dumps(dict(meta)))
    with atomic_file(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def load_shard(path: Path) -> tuple[np.ndarray, Outputs, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        names = set(data.files)
        outputs: Outputs = []
        k = 0
        while f"out{k}" in names or f"ragged{k}_values" in names:
            if f"out{k}" in names:
                outputs.append(data[f"out{k}"])
            else:
                values, offsets = data[f"ragged{k}_values"], data[f"ragged{k}_offsets"]
                outputs.append([values[offsets[i] : offsets[i + 1]] for i in range(offsets.size - 1)])
            k += 1
        return data["positions"], outputs, json.loads(str(data["meta"]))


def shard_fingerprint(path: Path) -> str | None:
    """The fingerprint a shard was written with; None when it is not a readable shard."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"])).get("fingerprint")
    except (OSError, ValueError, KeyError):
        return None


class RankFailed(RuntimeError):
    """Another rank failed (its message included) or stopped making progress."""


class ShardedInference:
    """One sharded pass over `costs.size` cells; see the module docstring."""

    def __init__(
        self,
        costs: Sequence[float] | np.ndarray,
        output_dir: str | os.PathLike,
        prefix: str,
        settings: Mapping[str, Any],
        *,
        inputs: Mapping[str, Any] | None = None,
        cost_model: str = "genes",
        parallel: ParallelContext | None = None,
        resume: bool = False,
        timeout: float = 1800.0,
        progress: bool = True,
        desc: str = "cells",
        groups: Sequence[np.ndarray] | None = None,
    ) -> None:
        """`groups`: positions of cells that one rank must run together (the batches of the plan one process makes
        from all the cells, in its order); by default each cell alone (a `compute` that does not batch)."""
        self.costs = np.asarray(costs, np.float64)
        if self.costs.size == 0:
            raise ValueError("no cells to run")
        self.parallel = parallel or launched_context()
        if self.parallel is None:
            raise RuntimeError("msrun's scheduler process has no share of the cells: return before sharding")
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.settings = dict(settings)
        self.cost_model = cost_model
        self.resume = resume
        self.timeout = timeout
        self.progress = progress
        self.desc = desc
        if groups is None:
            self.groups = [np.asarray([i], np.int64) for i in range(self.costs.size)]
        else:
            self.groups = check_groups(groups, self.costs.size)
        self.group_shares = partition_groups(self.costs, self.groups, self.parallel.world_size)
        self.shares = [
            np.sort(np.concatenate([self.groups[g] for g in share])) if share else np.zeros(0, np.int64)
            for share in self.group_shares
        ]
        identity = {"settings": self.settings, "inputs": dict(inputs or {})}
        ordered = None if groups is None else self.groups
        self.fingerprint = fingerprint(identity, self.costs, self.parallel.world_size, ordered or ())
        self.shard_dir = meeting_dir(self.output_dir) / f"{prefix}_shards"
        self.seconds: list[float | None] = [None] * self.parallel.world_size
        self.resumed: list[int] = []
        self.nonce = ""
        self._bar: Any = None
        self._done_here = 0
        self._last_poll = 0.0
        self._last_print = time.monotonic()  # the first progress line after ~10 s, then one at the end
        self._seen: dict[int, tuple[Any, float]] = {}

    # ---- paths ---------------------------------------------------------------------------------------------------
    @property
    def positions(self) -> np.ndarray:
        """This rank's cells (positions into the caller's list, ascending)."""
        return self.shares[self.parallel.rank]

    def shard_path(self, rank: int) -> Path:
        return self.shard_dir / f"rank{rank:05d}-of-{self.parallel.world_size:05d}.npz"

    def _marker(self, rank: int, kind: str) -> Path:
        return self.shard_dir / f"rank{rank:05d}.{kind}.json"

    # ---- the pass ------------------------------------------------------------------------------------------------
    def run(self, compute: Callable[[np.ndarray, Callable[[int], None]], Outputs]) -> Outputs | None:
        """Every cell's outputs in input order on rank 0 (or the only process); None on the other ranks once their
        shard is written. Raises on rank 0 when another rank failed or stalled."""
        if not self.parallel.distributed:
            started = time.perf_counter()
            with self._progress_bar():
                outputs = compute(self.positions, self._advance)
            self.seconds[0] = time.perf_counter() - started
            return outputs
        self._start_launch()
        if not self.parallel.is_main:
            # `compute` may write into the shard directory (a rank's own table): only once rank 0 has cleared it
            self._current_nonce()
        with self._progress_bar():
            own = self._compute_own_shard(compute)
            if not self.parallel.is_main:
                return None
            shards = self._wait_for_shards(own)
        return merge_shards(self.costs.size, shards)

    def _start_launch(self) -> None:
        """Rank 0 opens the launch (without resume: on an empty shard directory) under a fresh nonce; error markers
        of earlier launches are then ignored. The other ranks take the nonce when they need it."""
        if self.parallel.is_main:
            if not self.resume and self.shard_dir.exists():
                import shutil

                shutil.rmtree(self.shard_dir)
            self.nonce = uuid.uuid4().hex
            write_json(
                self.shard_dir / "launch.json",
                {"nonce": self.nonce, "host": socket.gethostname(), "time": time.time()},
            )
        self._marker(self.parallel.rank, "error").unlink(missing_ok=True)

    def _current_nonce(self, wait: bool = True) -> str:
        """The nonce of this launch. On rank 0's machine: a launch.json written after this process started (msrun
        starts every worker before any of them has imported MindSpore; an earlier launch wrote its file before).
        On other machines: whatever launch.json holds (the machines are started together). "" if there is none yet
        and not `wait`."""
        if self.nonce:
            return self.nonce
        import psutil

        started = psutil.Process().create_time()
        deadline = time.monotonic() + (self.timeout if wait else 0.0)
        while True:
            try:
                launch = read_json(self.shard_dir / "launch.json")
            except (OSError, ValueError):
                launch = None
            if launch and (launch["host"] != socket.gethostname() or launch["time"] >= started):
                self.nonce = launch["nonce"]
                return self.nonce
            if not wait:
                return ""
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
        raise RankFailed(f"rank 0 never opened this launch in {self.shard_dir} within {self.timeout:.0f} s")

    def _compute_own_shard(self, compute: Callable[[np.ndarray, Callable[[int], None]], Outputs]) -> Outputs:
        rank, path = self.parallel.rank, self.shard_path(self.parallel.rank)
        if self.resume and shard_fingerprint(path) == self.fingerprint:
            positions, outputs, meta = load_shard(path)
            self.seconds[rank] = meta.get("seconds")
            self.resumed.append(rank)
            self._done_here = positions.size
            self._report(final=True)
            return outputs
        try:
            started = time.perf_counter()
            # more ranks than cells leaves a rank without any
            outputs = compute(self.positions, self._advance) if self.positions.size else []
            self.seconds[rank] = time.perf_counter() - started
            meta = {"fingerprint": self.fingerprint, "seconds": self.seconds[rank], "rank": rank}
            save_shard(path, self.positions, outputs, {**meta, "nonce": self._current_nonce()})
        except BaseException as error:
            self._write_error(error)
            raise
        self._report(final=True)
        return outputs

    def _write_error(self, error: BaseException) -> None:
        try:
            message = f"{type(error).__name__}: {error}"
            write_json(
                self._marker(self.parallel.rank, "error"),
                {"nonce": self._current_nonce(), "message": message, "traceback": traceback.format_exc()},
            )
        except Exception:  # noqa: BLE001 - the original error matters more than the marker
            pass

    def _wait_for_shards(self, own: Outputs) -> list[tuple[np.ndarray, Outputs]]:
        """Rank 0: the shards of every rank (its own from memory), raising on another rank's error marker or
        stall."""
        world = self.parallel.world_size
        shards: dict[int, tuple[np.ndarray, Outputs]] = {0: (self.positions, own)}
        while len(shards) < world:
            for rank in range(1, world):
                if rank in shards:
                    continue
                path = self.shard_path(rank)
                if shard_fingerprint(path) == self.fingerprint:
                    positions, outputs, meta = load_shard(path)
                    if not np.array_equal(positions, self.shares[rank]):
                        raise RankFailed(f"shard {path} holds other cells than rank {rank}'s share")
                    shards[rank] = (positions, outputs)
                    self.seconds[rank] = meta.get("seconds")
                    if meta.get("nonce") != self.nonce:
                        self.resumed.append(rank)
                    continue
                self._check_rank(rank)
            self._poll_others()
            if len(shards) < world:
                time.sleep(POLL_SECONDS)
        self._poll_others(force=True)
        return [shards[r] for r in range(world)]

    def _check_rank(self, rank: int) -> None:
        """Raise when `rank` left an error marker in this launch or its progress has not moved for `timeout`."""
        try:
            error = read_json(self._marker(rank, "error"))
        except (OSError, ValueError):
            error = None
        if error and error.get("nonce") == self.nonce:
            raise RankFailed(f"rank {rank} failed: {error['message']} (traceback in {self._marker(rank, 'error')})")
        state = self._progress_of(rank)
        now = time.monotonic()
        previous = self._seen.get(rank)
        if previous is None or previous[0] != state:
            self._seen[rank] = (state, now)
        elif now - previous[1] > self.timeout:
            raise RankFailed(
                f"rank {rank} made no progress for {self.timeout:.0f} s and wrote no shard (killed, or its machine "
                "lost?); see its msrun log; rerun with --resume to keep the finished shards"
            )

    # ---- progress ------------------------------------------------------------------------------------------------
    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        show = self.progress and self.parallel.is_main
        self._bar = tqdm(total=int(self.costs.size), desc=self.desc, unit="cell", disable=not show, dynamic_ncols=True)
        if self.parallel.distributed and show:
            self._bar.set_postfix_str(f"{self.parallel.world_size} ranks")
        return self._bar

    def _progress_of(self, rank: int) -> dict[str, Any] | None:
        try:
            state = read_json(self._marker(rank, "progress"))
        except (OSError, ValueError):
            return None
        return state if state.get("nonce") == self.nonce else None

    def _advance(self, n: int) -> None:
        self._done_here += n
        if not self.parallel.distributed:
            self._bar.update(n)
        elif self.parallel.is_main:
            self._poll_others()
        else:
            self._report()

    def _poll_others(self, force: bool = False) -> None:
        """Rank 0's bar: its own cells plus those the other ranks report (at most every second)."""
        now = time.monotonic()
        if not force and now - self._last_poll < 1.0:
            return
        self._last_poll = now
        done = self._done_here
        for rank in range(1, self.parallel.world_size):
            if self.shard_path(rank).exists():
                done += self.shares[rank].size
            else:
                state = self._progress_of(rank)
                done += int(state["done"]) if state else 0
        self._bar.n = min(done, self._bar.total)
        self._bar.refresh()

    def _report(self, final: bool = False) -> None:
        """A non-zero rank: its progress file (at most twice a second) and a line in its log every ~10 s. The final
        report only prints: its shard is written, and rank 0 may have merged and removed the directory already."""
        now = time.monotonic()
        if self.parallel.is_main or (not final and now - self._last_poll < 0.5):
            return
        self._last_poll = now
        total = self.positions.size
        nonce = self._current_nonce(wait=False)
        if nonce and not final:
            marker = self._marker(self.parallel.rank, "progress")
            write_json(marker, {"nonce": nonce, "done": self._done_here, "total": int(total)})
        if final or now - self._last_print > 10.0:
            self._last_print = now
            # stderr: a training run (gf classify) keeps the stdout of the ranks other than 0 quiet
            print(f"rank {self.parallel.rank}: {self._done_here}/{total} cells", file=sys.stderr, flush=True)

    # ---- the record ----------------------------------------------------------------------------------------------
    def finish(self, files: Sequence[str | os.PathLike] = ()) -> Path | None:
        """Rank 0 (or the only process), after writing the outputs: `{prefix}_run.json` (settings, version, world
        size, cells, cost and seconds per rank), then the shards are removed. None on other ranks."""
        if not self.parallel.is_main:
            return None

        record = {
            "prefix": self.prefix,
            "settings": self.settings,
            "version": __version__,
            "world_size": self.parallel.world_size,
            "cost_model": self.cost_model,
            "cells": int(self.costs.size),
            "cells_per_rank": [int(s.size) for s in self.shares],
            "groups_per_rank": [len(s) for s in self.group_shares],
            "cost_per_rank": [float(self.costs[s].sum()) for s in self.shares],
            "seconds_per_rank": [None if s is None else round(float(s), 3) for s in self.seconds],
            "resumed_ranks": sorted(self.resumed),
            "outputs": [str(f) for f in files],
        }
        path = write_json(self.output_dir / f"{self.prefix}_run.json", record)
        self.remove_shards()
        return path

    def remove_shards(self) -> None:
        """Rank 0 (or the only process), once the merged outputs are used: the shard directory goes. A pass that
        writes no record (e.g. a validation pass while training) calls this instead of `finish`."""
        if self.parallel.is_main and self.shard_dir.exists():
            import shutil

            shutil.rmtree(self.shard_dir, ignore_errors=True)
