# vlmtune: `make install`, then `make demo` (the main job, offline on the CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Nothing here downloads weights or data: the demo and the tests use tiny parts written locally.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install browser demo test lint bench bench-gpu clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk; a range would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,optuna,submitit,serve,quanto,autoround]"
	# DeepSpeed builds from its source archive against the torch above (about 50 s here): no build isolation.
	$(BIN)/python -m pip install --quiet wheel
	$(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.19,<0.20"  # = the [deepspeed] extra
	# torchao beside the venv, not in it: installed, every transformers import loads it (~1 s, warnings). The tests
	# and docs/quantization.md put it on PYTHONPATH where it is used.
	$(BIN)/python -m pip install --quiet --no-deps --target .extras/torchao "torchao==0.18.0"

# Debian's Chromium for the `vlmtune serve` browser test (Playwright drives it; its own browser download cannot
# run offline). Needs root and apt; skipped when chromium is already there.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo:
	$(BIN)/vlmtune demo

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .

bench:
	$(BIN)/python -m vlmtune.bench

bench-gpu:
	$(BIN)/python -m vlmtune.bench.gpu

clean:
	rm -rf runs outputs multirun .pytest_cache .ruff_cache bench-results bench-gpu-results
