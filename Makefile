# fusionkit: `make lab` sets up and opens the kit, `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 first: on the project's machines it is a CPU build on local disk; an unpinned torch would
# pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup assets lab test tour clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

assets: setup
	$(BIN)/fusionkit assets

# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: assets
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/00_start_here.ipynb

test: assets
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

tour: assets
	$(BIN)/fusionkit tour --profile smoke

clean:
	rm -rf runs .pytest_cache
