"""The long result table of a perturbation run, written in Parquet shards as cells finish.

`{output_dir}/{prefix}.parquet/` is a Parquet dataset (`pandas.read_parquet` reads the directory as one table):
`part-00000.parquet`, `part-00001.parquet`, ... each holding complete cells only, each written under a hidden
temporary name and renamed into place, plus `_run.json` (the run's settings). Columns: `cell` (dataset row), the
label columns, `perturbed` (Ensembl IDs, "+"-joined for groups and combos), `affected` ("cell_emb", a state name,
or the Ensembl ID of an affected gene), `value`.

Rows come cell by cell in the order the cells were selected, each cell's rows in the order of its perturbations, so
the table does not depend on batching nor on how many ranks computed it. Resuming reads the cells already in the
shards and skips them; a run with other settings is refused. Under msrun each rank writes such a table of its share
(`{prefix}_shards/rank*.parquet/`) and rank 0 merges them with `ShardedTable.add_rows`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.io import atomic_file, read_json, write_csv, write_json

RUN_FILE = "_run.json"
CORE_COLUMNS = ("perturbed", "affected", "value")


class PerturbationInputError(ValueError):
    """A problem with the user's input, reported as one line naming it and the fix."""


def table_dir(output_dir: str | os.PathLike, prefix: str) -> Path:
    return Path(output_dir) / f"{prefix}.parquet"


def read_table(path: str | os.PathLike) -> Any:
    """A run's table (its directory, or a .csv written with output_format="csv") as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"perturbed": str, "affected": str})
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise PerturbationInputError(f"{path} holds no perturbation results (no part-*.parquet)")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def finished_cells(directory: Path, settings: dict[str, Any], resume: bool) -> set[int]:
    """The cells (dataset rows) already in the table at `directory`, read without writing anything; refuses an
    existing table without `resume` and one run with other settings."""
    if directory.exists() and not resume:
        raise PerturbationInputError(
            f"{directory} exists: pass resume=True (gf perturb --resume) to continue that run, or another "
            "output_prefix / output_dir"
        )
    done: set[int] = set()
    if not (resume and directory.is_dir()):
        return done
    recorded = read_json(directory / RUN_FILE) if (directory / RUN_FILE).is_file() else None
    if recorded is not None and recorded != jsonable(settings):
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != jsonable(settings).get(k))
        raise PerturbationInputError(
            f"cannot resume {directory}: it was run with other settings ({', '.join(changed)}); use the same "
            "arguments or a new output_prefix"
        )
    import pyarrow.parquet as pq

    for part in sorted(directory.glob("part-*.parquet")):
        done.update(int(c) for c in np.unique(pq.read_table(part, columns=["cell"]).column(0).to_numpy()))
    return done


class ShardedTable:
    """Rows of finished cells, buffered and written as a new shard every `shard_cells` cells or `shard_seconds`."""

    def __init__(
        self,
        directory: Path,
        label_columns: Sequence[str],
        settings: dict[str, Any],
        resume: bool,
        shard_cells: int = 100,
        shard_seconds: float = 60.0,
    ) -> None:
        self.directory = directory
        self.label_columns = list(label_columns)
        self.shard_cells, self.shard_seconds = shard_cells, shard_seconds
        self.done = finished_cells(directory, settings, resume)
        existing = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / RUN_FILE, jsonable(settings))
        self.next_part = 1 + max((int(p.stem.split("-")[1]) for p in existing), default=-1)
        self.buffer: dict[str, list] = {c: [] for c in ("cell", *self.label_columns, *CORE_COLUMNS)}
        self.buffered_cells = 0
        self.last_write = time.monotonic()
        self.parts: list[Path] = list(existing)

    def add_cell(self, cell: int, labels: dict[str, Any], perturbed: list[str], affected: list[str], values) -> None:
        n = len(values)
        self.buffer["cell"] += [int(cell)] * n
        for column in self.label_columns:
            self.buffer[column] += [labels[column]] * n
        self.buffer["perturbed"] += perturbed
        self.buffer["affected"] += affected
        self.buffer["value"] += [float(v) for v in values]
        self.buffered_cells += 1
        self.done.add(int(cell))
        if self.buffered_cells >= self.shard_cells or time.monotonic() - self.last_write >= self.shard_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.buffered_cells:
            return
        import pandas as pd

        self._write_part(pd.DataFrame(self.buffer))
        self.buffer = {c: [] for c in self.buffer}
        self.buffered_cells = 0

    def add_rows(self, frame: Any) -> None:
        """Rows of whole cells (a DataFrame of this table's columns) as one part: how rank 0 merges the ranks'
        tables."""
        self.flush()
        self._write_part(frame.reset_index(drop=True))
        self.done.update(int(c) for c in np.unique(frame["cell"].to_numpy()))

    def _write_part(self, frame: Any) -> None:
        frame = frame.astype({"cell": np.int64, "value": np.float64})
        path = self.directory / f"part-{self.next_part:05d}.parquet"
        with atomic_file(path) as tmp:
            frame.to_parquet(tmp, index=False)
        self.parts.append(path)
        self.next_part += 1
        self.last_write = time.monotonic()

    def write_csv(self, path: Path) -> Path:
        return write_csv(path, read_table(self.directory))


def jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(settings, default=str))
