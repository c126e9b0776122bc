# The two set-up commands: `make demo` and `make test`.  Both create .venv when it is
# missing and install everything the project needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.oncoai-installed

.PHONY: install system-deps demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned first so that no dependency can pull the CUDA build of torch.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash .ci/system-deps.sh

demo: install
	$(BIN)/oncoai demo

test: install system-deps
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
