"""attention_impl="auto" never falls back silently: without the CPU kernel library it picks the composed backend
and says so once per process, naming the build command; the explicit "fused" is an error naming the same fix."""

from __future__ import annotations

import warnings

import pytest

from mindformer_gf.ops import cpu, dispatch


@pytest.fixture
def library_not_built(monkeypatch, tmp_path):
    # The loader looks for the library in an empty directory, as in a source checkout that was never built.
    monkeypatch.setattr(cpu, "_LIBRARY_DIR", tmp_path)
    monkeypatch.setattr(dispatch, "_fallback_warned", False)
    assert cpu.library_path() is None


def test_auto_without_kernels_warns_once_naming_the_build(library_not_built):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.resolve_impl("auto") == "composed"
        assert dispatch.resolve_impl("auto") == "composed"
    fallbacks = [w for w in caught if issubclass(w.category, dispatch.KernelFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    message = str(fallbacks[0].message)
    for command in ("make setup", "pip install -e .", "python setup.py build_ext --inplace", "'composed'"):
        assert command in message
    with pytest.raises(cpu.KernelLibraryMissing, match=r"python setup.py build_ext --inplace"):
        dispatch.resolve_impl("fused")


def test_no_warning_when_the_kernels_are_built(monkeypatch):
    monkeypatch.setattr(dispatch, "_fallback_warned", False)
    assert cpu.library_path() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve_impl("auto") == "fused"
        assert dispatch.resolve_impl("composed") == "composed"
