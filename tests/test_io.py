"""The one atomic writer (mindformer_gf.io): a failed or interrupted write leaves the previous file or directory, or
nothing, and no temporary behind."""

from __future__ import annotations

import os

import pytest

from mindformer_gf import io


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "table.csv"
    io.write_text(target, "old\n")
    with pytest.raises(RuntimeError), io.atomic_file(target) as tmp:
        tmp.write_text("half of the new", encoding="utf-8")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and _names(target.parent) == ["table.csv"]
    io.write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n' and _names(target.parent) == ["table.csv"]
    # readable like any new file (mkstemp creates it private)
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_directory_is_published_whole_and_refused_without_force(tmp_path):
    target = tmp_path / "model"
    with io.atomic_directory(target) as staging:
        (staging / "config.json").write_text("{}")
    assert _names(target) == ["config.json"]
    with pytest.raises(FileExistsError, match="already exists; pass --force"), io.atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), io.atomic_directory(target, force=True) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert _names(target) == ["config.json"] and _names(tmp_path) == ["model"]
    with io.atomic_directory(target, force=True) as staging:
        (staging / "weights").write_text("new")
    assert _names(target) == ["weights"] and _names(tmp_path) == ["model"]


def test_a_failed_rename_puts_the_previous_directory_back(tmp_path, monkeypatch):
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old").write_text("kept")
    staging = io.staging_directory(target)
    (staging / "new").write_text("new")
    real_replace = os.replace

    def replace(source, destination):
        if os.fspath(source) == os.fspath(staging):
            raise OSError("disk full")
        return real_replace(source, destination)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        io.publish_directory(staging, target, force=True)
    assert (target / "old").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".dataset.partial-")) == ["dataset"]
