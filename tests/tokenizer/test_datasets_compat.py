"""Our datasets open with the `datasets` of the reference's users, and theirs with ours, for real: a throw-away
virtual environment (no site packages of ours) holds `datasets` 3.6 from PyPI and, beside it, 2.12 (the oldest the
reference allows) and reads what `gf tokenize` and `save_dataset` wrote.

The environment is built once and kept in pytest's cache (.pytest_cache/d/old-datasets-env, ~45 s to build with an
empty pip cache, then reused). Without PyPI the test FAILS saying so; GF_SKIP_OLD_DATASETS=1 skips it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from mindformer_gf.cli import main
from mindformer_gf.resources import example_cells_path

# datasets 3.6 and 2.12 share one set of dependencies: numpy 1.x (pyarrow < 21 wheels and datasets 2.12 predate
# numpy 2), pyarrow 15-20 (3.6 needs >= 15; 21 dropped the PyExtensionType 2.12 imports) and huggingface_hub < 1
# (1.0 removed the HfFolder 2.12 imports).
BASE_REQUIREMENTS = ["datasets==3.6.*", "numpy<2", "pyarrow>=15,<21", "huggingface_hub>=0.24,<1"]
OLDEST = "datasets==2.12.0"
ENV_SPEC = json.dumps([BASE_REQUIREMENTS, OLDEST, sys.version_info[:2]])

# Run by the old environment's python: read each dataset, print what it holds as JSON.
READER = """
import json, sys
import datasets
out = {"version": datasets.__version__, "datasets": {}}
for path in sys.argv[1:]:
    d = datasets.load_from_disk(path)
    out["datasets"][path] = {
        "num_rows": d.num_rows,
        "columns": d.column_names,
        "features": {k: repr(v) for k, v in d.features.items()},
        "description": d.info.description,
        "rows": {c: d[c] for c in d.column_names},
    }
print(json.dumps(out))
"""

# Run by the old environment's python: a dataset as its users make one (Sequence features, save_to_disk).
OLD_WRITER = """
import sys
import datasets
features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64")),
                              "length": datasets.Value("int64"), "cell_type": datasets.Value("string")})
cells = [[5, 9, 7], [3, 4], [8, 2, 6, 11]]
datasets.Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells], "cell_type": ["a", "b", "a"]},
                           features=features).save_to_disk(sys.argv[1])
"""


def _run(command: list[str], what: str, **options) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **options)
    if done.returncode != 0:
        pytest.fail(f"{what} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="session")
def old_datasets(request, tmp_path_factory) -> dict[str, tuple[str, dict[str, str]]]:
    """{version label: (python, environment)} of the old `datasets` installs, built once into pytest's cache."""
    if os.environ.get("GF_SKIP_OLD_DATASETS", "") not in ("", "0"):
        pytest.skip("GF_SKIP_OLD_DATASETS is set: not checking our datasets with datasets 3.6 and 2.12")
    cache = getattr(request.config, "cache", None)  # none under -p no:cacheprovider: built for this session only
    root = Path(cache.mkdir("old-datasets-env")) if cache else tmp_path_factory.mktemp("cache") / "old-datasets-env"
    ready = root / "ready.json"
    if not (ready.is_file() and ready.read_text() == ENV_SPEC):
        building = root.parent / f".old-datasets-env.building-{uuid.uuid4().hex[:8]}"
        try:
            _run([sys.executable, "-m", "venv", "--without-pip", str(building / "venv")], "creating a virtual env")
            pip = [sys.executable, "-m", "pip", "--python", str(building / "venv" / "bin" / "python"), "install", "-q"]
            hint = "installing old datasets from PyPI (needs network; set GF_SKIP_OLD_DATASETS=1 to skip this check)"
            _run([*pip, *BASE_REQUIREMENTS], hint)
            # the oldest version beside it, on top of the same dependencies (its pins would not resolve with 3.6's)
            _run([*pip, "--no-deps", "--target", str(building / "oldest"), OLDEST], hint)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        (building / "ready.json").write_text(ENV_SPEC)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(building, root)
    python = str(root / "venv" / "bin" / "python")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {
        "3.6": (python, {**clean, "HF_DATASETS_OFFLINE": "1"}),
        "2.12": (python, {**clean, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(root / "oldest")}),
    }


@pytest.fixture(scope="module")
def our_datasets(tmp_path_factory) -> dict[str, Path]:
    """A dataset written by `gf tokenize` (with a custom column) and one written by `save_dataset` from a selection
    of it (what the tasks write, e.g. the demo's pretraining corpus)."""
    from datasets import load_from_disk

    from mindformer_gf.tokenizer.writer import save_dataset

    out = tmp_path_factory.mktemp("ours")
    source = example_cells_path("pbmc_chr21")
    argv = ["tokenize", str(source), str(out), "--prefix", "chr21", "--custom-attr", "barcode:cell_barcode"]
    assert main([*argv, "--no-progress"]) == 0
    tokenized = out / "chr21.dataset"
    selected = save_dataset(load_from_disk(str(tokenized)).select([9, 2, 5, 0]), out / "selected.dataset")
    return {"tokenized": tokenized, "selected": selected}


def read_with(env: tuple[str, dict[str, str]], paths: list[Path]) -> dict:
    python, environ = env
    done = _run([python, "-c", READER, *map(str, paths)], "reading our datasets with an old datasets", env=environ)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", ["3.6", "2.12"])
def test_old_datasets_read_ours(old_datasets, our_datasets, version):
    from datasets import load_from_disk

    from mindformer_gf.tokenizer import read_dictionary_metadata

    seen = read_with(old_datasets[version], list(our_datasets.values()))
    assert seen["version"].startswith(version + ".")
    for name, path in our_datasets.items():
        old = seen["datasets"][str(path)]
        ours = load_from_disk(str(path))
        assert old["num_rows"] == ours.num_rows and old["columns"] == ["input_ids", "length", "cell_barcode"], name
        assert old["features"]["input_ids"].startswith("Sequence(feature=Value(dtype='int32'"), name
        for column in ours.column_names:
            assert old["rows"][column] == [np.asarray(v).tolist() for v in ours[column]], (name, column)
        # the dictionary record survives, and old readers see the same JSON
        assert json.loads(old["description"]) == read_dictionary_metadata(path)
    tokenized = seen["datasets"][str(our_datasets["tokenized"])]
    assert [len(ids) for ids in tokenized["rows"]["input_ids"]] == tokenized["rows"]["length"]
    assert tokenized["num_rows"] == 1107


def test_datasets_of_old_versions_read_in_ours(old_datasets, tmp_path):
    from mindformer_gf.data import load_corpus, read_cells

    python, environ = old_datasets["3.6"]
    path = tmp_path / "theirs.dataset"
    _run([python, "-c", OLD_WRITER, str(path)], "writing a dataset with datasets 3.6", env=environ)
    dataset = load_corpus(str(path), vocab_size=25426)
    assert [c.tolist() for c in read_cells(dataset, np.arange(3))] == [[5, 9, 7], [3, 4], [8, 2, 6, 11]]
    assert list(dataset["cell_type"]) == ["a", "b", "a"]
