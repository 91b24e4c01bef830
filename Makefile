# Two commands for a fresh machine: `make quickstart` (the whole pipeline) and `make test` (CI runs this).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Torch first: on a machine without an NVIDIA GPU take the CPU wheel (pinned, on local disk here);
# with a GPU, the plain torch>=2.4 requirement of pyproject.toml brings the CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The tests cover the optional extras too (TensorBoard, MLflow, ONNX export: about 15 s and 280 MB more), so
# `make test` installs them; the quickstart does not need them.
# The plugins under plugins/ (other than DiNTS, which ships inside nastk) are their own distributions:
# installed for the tests so that theirs run and the contract is checked against more than one space.
$(VENV)/.test-extras: $(VENV)/.installed plugins/vnas/pyproject.toml
	$(BIN)/pip install -q -e '.[test,export,tensorboard,mlflow]'
	$(BIN)/pip install -q -e plugins/vnas
	touch $@

.PHONY: install test lint bench quickstart
install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(BIN)/nastk quickstart

test: $(VENV)/.test-extras
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench
