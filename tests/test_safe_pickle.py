"""The restricted unpickler: plain data loads, anything that could run code is refused before it runs."""

import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from mindformer_gf.safe_pickle import UnsafePickleError, safe_load


class WritesAFile:
    """Unpickling this calls os.system, which would create `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_dictionaries_of_numpy_scalars_load_exactly():
    data = {"<pad>": 0, "<mask>": 1, "ENSG00000000003": np.int16(2), "median": np.float64(1.25)}
    loaded = safe_load(pickle.dumps(data))
    assert loaded == data
    assert type(loaded["ENSG00000000003"]) is np.int16 and loaded["median"] == 1.25


def test_ordered_dicts_lists_and_tuples_load():
    data = OrderedDict(a=[1, 2.5, "x"], b=(3, None), c={1, 2})
    assert safe_load(pickle.dumps(data, protocol=2)) == data


def test_a_payload_that_would_create_a_file_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"genes": WritesAFile(str(target))})
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        safe_load(payload)
    assert not target.exists()
    # The same bytes do run code under plain pickle: the test would catch a permissive loader.
    pickle.loads(payload)
    assert target.exists()


def test_numpy_arrays_are_not_admitted_in_dictionaries():
    with pytest.raises(UnsafePickleError, match="numpy"):
        safe_load(io.BytesIO(pickle.dumps({"x": np.arange(3)})))
