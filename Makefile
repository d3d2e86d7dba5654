# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the plug-in example installs like any third-party adapter: its tests run with ours
$(STAMP): $(BIN)/python pyproject.toml examples/plugin/pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q -e examples/plugin
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sender demo

test: $(STAMP)
	$(BIN)/ruff check sender adapters tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest -q
	cd examples/plugin && $(abspath $(BIN))/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sender adapters tests bench examples
	$(BIN)/mypy
	$(BIN)/ruff format --check sender adapters tests bench examples

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var bench/data bench/results/*.tmp
