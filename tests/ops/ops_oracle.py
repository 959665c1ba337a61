"""The old place of `helpers.oracles`, kept while the Ascend files (tests/ops/test_ascend_selftest.py, and
tools/ascend_cases.py, which loads this file by its path) import it from here."""

import sys
from pathlib import Path

# tests/, where the helpers live, for a tool that loads this file by its path outside pytest
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.oracles import *  # noqa: E402, F403
from helpers.oracles import __all__  # noqa: E402, F401
