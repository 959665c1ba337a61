"""The tokenizer benchmark runs end to end on a tiny generated file and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_bench_quick_run(tmp_path: Path) -> None:
    command = [sys.executable, "bench/tokenizer.py", "--cells", "300", "--genes", "2000", "--nonzero", "100"]
    command += ["--nproc", "1", "--workdir", str(tmp_path / "bench")]
    completed = subprocess.run(command, cwd=REPOSITORY, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in completed.stdout.splitlines()]
    # every record says on which CPU and with how many threads it ran
    from mindformer_gf.host import describe_cpu

    host = describe_cpu()
    for record in records:
        assert record["threads"] >= 1
        assert {k: record[k] for k in host} == host
    assert [r["event"] for r in records] == ["generated", "tokenized", "summary"]
    generated, tokenized, summary = records
    assert 90 <= generated["nnz"] / 300 <= 100
    assert tokenized["cells_written"] == 300
    assert summary["cells_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["target_cells_per_s"] == 20000 and summary["target_peak_rss_mb"] == 2048
    assert not (tmp_path / "bench").exists()
