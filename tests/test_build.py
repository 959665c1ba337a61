"""The package build names a missing C++ compiler instead of failing deep inside setuptools."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_missing_compiler_is_named(tmp_path):
    env = dict(os.environ, CXX="/nonexistent/g++", CC="/nonexistent/gcc")
    result = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
            "--force",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "'/nonexistent/g++' was not found" in result.stderr + result.stdout
    assert not (tmp_path / "lib").exists() or not list((tmp_path / "lib").rglob("*.so"))
