# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-airflow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the plug-in example installs like any third-party adapter: its tests run with ours
$(STAMP): $(BIN)/python pyproject.toml examples/plugin/pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q -e examples/plugin
	touch $(STAMP)

# The Airflow provider runs in a venv of its own (Airflow pins its own structlog, pydantic,
# rich, tenacity), built once and reused until its requirements change.
AIRFLOW_VENV := $(VENV)/airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
PROVIDER := providers/airflow

$(AIRFLOW_STAMP): $(PROVIDER)/pyproject.toml $(PROVIDER)/requirements-ci.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q -r $(PROVIDER)/requirements-ci.txt -e '$(PROVIDER)[test]'
	touch $(AIRFLOW_STAMP)

# the batch, its summary, then the status page stays up for 10 minutes (Ctrl-C ends it)
demo: $(STAMP)
	$(BIN)/sender demo --serve

test: $(STAMP)
	$(BIN)/ruff check sender adapters tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest -q
	cd examples/plugin && $(abspath $(BIN))/pytest -q
	$(MAKE) test-airflow

# the provider's tests start the main venv's `sender run`, so both venvs are needed
test-airflow: $(STAMP) $(AIRFLOW_STAMP)
	$(BIN)/ruff check $(PROVIDER)
	$(BIN)/ruff format --check $(PROVIDER)
	cd $(PROVIDER) && $(abspath $(AIRFLOW_VENV))/bin/mypy --cache-dir $(abspath $(AIRFLOW_VENV))/.mypy_cache
	cd $(PROVIDER) && $(abspath $(AIRFLOW_VENV))/bin/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sender adapters tests bench examples
	$(BIN)/mypy
	$(BIN)/ruff format --check sender adapters tests bench examples

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var bench/data bench/results/*.tmp
