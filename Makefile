# Everything sets itself up from nothing: a venv in .venv with casbackup installed editable.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup demo test lint bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python sample_app/demo.py

lint: $(STAMP)
	$(BIN)/ruff check casbackup tests bench sample_app
	$(BIN)/ruff format --check casbackup tests bench sample_app

test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-work bench/work .pytest_cache
