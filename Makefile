# `make demo` and `make test` set everything up themselves (a virtual environment in .venv), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# msrun (data-parallel tests) starts plain `python`: the environment's bin must come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# No thread pinning: every run uses the cores its process may run on (GF_THREADS or `--threads N` to change it).
# The suite runs in one pytest worker per core (at most 4: each worker holds its own MindSpore, ~1 GB); most tests
# compile graphs on one thread, so 2 workers on 2 cores halve the wall time. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: setup demo test test-fast lint bench clean ascend-check ascend-model

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard kernels/cpu/*.cc kernels/cpu/*.h kernels/tokenizer/*.cc)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install -q "mindspore>=2.10.0"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

demo: setup
	$(PY) -m mindformer_gf demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# everyday subset: no training runs of the task tests, no demo, no msrun or real-data pretraining
test-fast: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" --ignore=tests/train/test_distributed.py --ignore=tests/train/test_real_data.py tests

# Type-check the Ascend C operators against the public Ascend C headers (see kernels/ascend/README.md, "Type-check").
ascend-check: setup
	$(PY) tools/ascend_check.py

# Run the Ascend C kernels' own sources on our functional model of the Ascend C API (g++ only; see
# kernels/ascend/README.md, "Running on the API model"): the full case matrix, non-zero exit on any mismatch or check.
# `make test` runs the representative subset (tests/ops/test_ascend_model.py).
ascend-model: setup
	$(PY) tools/ascend_model.py

bench: setup
	$(PY) bench/attention.py
	$(PY) bench/dropout_mask.py
	$(PY) bench/encoder.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) build *.egg-info mindformer_gf/ops/_cpu_kernels*.so mindformer_gf/tokenizer/_rank_native*.so
