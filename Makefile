# `make demo` and `make test` work on a fresh machine: each sets up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

# Torch first, pinned to the CPU build on this disk, so that the project's own `torch>=2.4`
# is already satisfied and pip never reaches for a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# --overwrite: a second `make demo` replaces the runs the first one left in runs/demo.
demo: setup
	$(BIN)/gradwatch demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: setup
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
