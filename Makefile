# Two entry points for a newcomer: `make demo` and `make test`. Both create (or reuse) .venv
# and install what they need into it on first use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.rankax-core
TEST := $(VENV)/.rankax-test
BENCH := $(VENV)/.rankax-bench
WORKDIR ?= runs/digits

.PHONY: demo test test-quick test-tf32 test-gpu gpu-wheels lint bench clean torch

$(CORE): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH (rankax needs Python >= 3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "make: rankax needs Python >= 3.11," \
		" $(PYTHON) is %s; run make PYTHON=python3.11" % sys.version.split()[0])'
	@new=$$(test -d $(VENV) || echo 1); $(PYTHON) -m venv $(VENV) || { test -z "$$new" || rm -rf $(VENV); \
		echo "make: $(PYTHON) -m venv failed; on Debian/Ubuntu install the venv module (apt install" \
		"$$($(PYTHON) -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')), then rerun"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(CORE)

$(TEST): $(CORE)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST)

## Optional: the CPU torch wheel enables the PyTorch comparison tests (weight conversion, the
## official losses); where it is not available those tests are skipped. `make test` tries it on
## every run until it is installed (rankax imports torch only to read .pth weights).
torch: $(TEST)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0 \
		|| echo "torch==2.13.0 unavailable: torch comparison tests will be skipped"

## The baselines of `make bench` (faiss, pytorch-metric-learning; torch first, pinned).
$(BENCH): $(TEST)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH)

## Train and evaluate the default config (scikit-learn digits) on the CPU.
demo: $(CORE)
	$(PY) -m experiments.train --config configs/digits.py --workdir $(WORKDIR)

## Lint, then the whole test suite (notebooks included). xdist's default `load` distribution:
## `--dist loadgroup` (which would keep each `xdist_group` module on one worker) took 29:10 for the
## suite against 25:48 for `load`, fresh clones in the same hour on the 2-core host.
test: $(TEST) torch
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -q tests

## The core of the suite (losses, batch path, metrics, retrieval, training/CLI on digits):
## `make test` without the tests marked slow in tests/conftest.py. TESTS=tests/test_x.py narrows it.
TESTS ?= tests
test-quick: $(TEST)
	$(PY) -m pytest -n 2 -q -m "not slow" $(TESTS)

## The core of the suite on the CPU with a GPU's default matmul precision emulated: every matrix
## product and convolution not asking for float32-exact products gets TF32 operands
## (RANKAX_EMULATE_TF32 in tests/conftest.py). A test that fails only here would fail on a GPU.
test-tf32: $(TEST)
	RANKAX_EMULATE_TF32=1 $(PY) -m pytest -n 2 -q -m "not slow" $(TESTS)

## The whole suite on a GPU host, with a CUDA jax in the interpreter GPU_PY (default .venv's;
## e.g. `pip install -U "jax[cuda13]"` there, or `make test-gpu GPU_PY=python3`).
GPU_PY ?= $(PY)
GPU_WORKERS ?= 8
PYTEST_ARGS ?=
test-gpu:
	@$(GPU_PY) -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 'test-gpu: jax sees no GPU; install a CUDA jax (pip install -U \"jax[cuda13]\")')"
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(GPU_PY) -m pytest -n $(GPU_WORKERS) -q $(PYTEST_ARGS) tests

## Wheels (CPython 3.12, x86-64 Linux) of the packages a CUDA image with jax, flax, optax, orbax,
## torch, pytest and hypothesis lacks, downloaded here into .whl/ for `experiments/gpu_check.sh`,
## which installs them there without an index. Versions: those this repository is tested with.
GPU_WHEEL_DIR ?= .whl
GPU_WHEELS := ml_collections==1.1.0 tensorboardX==2.6.5 scann==1.4.2 pytorch-metric-learning==2.9.0 \
	grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 tensorflow-datasets==4.9.10 \
	tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 immutabledict==4.3.1 \
	simple-parsing==0.1.9 docstring-parser==0.18.0 termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
	manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64
gpu-wheels:
	@# A fresh folder: gpu_check.sh installs every wheel in it, and two versions of one would clash.
	rm -rf $(GPU_WHEEL_DIR)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) -d $(GPU_WHEEL_DIR) $(GPU_WHEELS)
	@# promise (a tensorflow-datasets dependency) is published as a source archive only.
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(GPU_WHEEL_DIR) promise==2.3
	@du -sh $(GPU_WHEEL_DIR)

lint: $(TEST)
	$(VENV)/bin/ruff check .

## Speed/memory of the batch path and of retrieval evaluation (writes docs/), the image input
## pipeline against a PyTorch DataLoader (docs/benchmarks_input.md), ScaNN vs exact at
## 200k x 128 (printed; `python -m experiments.benchmark_scann --large 1000000 --docs
## docs/benchmarks.md` rewrites the ScaNN section of docs/benchmarks.md).
bench: $(BENCH)
	$(PY) -m experiments.benchmark --docs docs
	$(PY) -m experiments.benchmark_paths --sizes 1024,4096 --docs docs
	$(PY) -m experiments.benchmark_retrieval
	$(PY) -m experiments.benchmark_scann
	$(PY) -m experiments.benchmark_input --docs docs/benchmarks_input.md

clean:
	rm -rf $(VENV) runs
