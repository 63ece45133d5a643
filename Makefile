# vlmtune: `make install`, then `make demo` (the main job, offline on the CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Nothing here downloads weights or data: the demo and the tests use tiny parts written locally.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo test lint bench bench-gpu clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk; a range would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,optuna,submitit]"
	# DeepSpeed builds from its source archive against the torch above (about 50 s here): no build isolation.
	$(BIN)/python -m pip install --quiet wheel
	$(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.19,<0.20"  # = the [deepspeed] extra

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
