# Two entry points: `make demo` runs the seed demo on an embedded Dask cluster,
# `make test` runs the test suite (`make test-all` adds the slow tests: what CI runs).
# All create .venv with python3 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-all bench install clean

$(BIN)/meanshift: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot,prefect]'
	touch $@

install: $(BIN)/meanshift

demo: install
	$(BIN)/meanshift demo

test: install
	$(BIN)/python -m pytest -q -n auto --dist loadgroup -m "not slow and not gpu"

test-all: install
	$(BIN)/python -m pytest -q -n auto --dist loadgroup -m "not gpu"

clean:
	rm -rf $(VENV) meanshift-demo.png .pytest_cache

bench: install
	$(BIN)/python -m benchmarks.run
