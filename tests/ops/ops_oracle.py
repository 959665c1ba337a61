"""The old place of `helpers.oracles`, kept while tests/ops/test_ascend_selftest.py (changed by the Ascend work) imports
it from here."""

from helpers.oracles import *  # noqa: F403
from helpers.oracles import __all__  # noqa: F401
