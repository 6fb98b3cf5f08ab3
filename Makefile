# scalepool: two commands.  `make demo` runs the main job, `make test` the tests.
# Both create .venv on first use: torch==2.13.0 (CPU wheel) is installed first
# and explicitly, because an unpinned torch would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

.PHONY: setup demo demo-testbeds test test-fast lint clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,all]"
	touch $(STAMP)

demo: setup
	$(BIN)/scalepool reproduce --quick --out $(DEMO) --figures-dir figures
	$(BIN)/scalepool readme --write --run $(DEMO)

# the graphene and chignolin benchmarks (issue 14) at the quick size, ~20 min on 2 cores
demo-testbeds: setup
	$(BIN)/scalepool reproduce --quick --testbeds-only --out $(DEMO) --figures-dir figures

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check scalepool tests studies benchmarks

clean-demo:
	rm -rf $(DEMO)
