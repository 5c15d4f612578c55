# Two entry points: `make demo` runs the seed demo on an embedded Dask cluster,
# `make test` runs the test suite. Both create .venv with python3 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench install clean

$(BIN)/meanshift: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot]'
	touch $@

install: $(BIN)/meanshift

demo: install
	$(BIN)/meanshift demo

test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

clean:
	rm -rf $(VENV) meanshift-demo.png .pytest_cache

bench: install
	$(BIN)/python -m benchmarks.run
