# Quick start:  make demo   (set-up + the demo)     make test   (set-up + the test suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/subjectgen: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/subjectgen

demo: setup
	$(BIN)/subjectgen demo --out demo

test: setup
	$(BIN)/python -m pytest -q

# The emoji sources, needed only to re-render the world (`subjectgen world build/train`) and by its tests.
world-sources:
	apt-get install -y fonts-noto-color-emoji
	npm install --prefix $(HOME)/.cache/subjectgen/npm emoji-datasource-twitter@16.0.0

bench: setup
	$(BIN)/python benchmarks/run_all.py

.PHONY: setup demo test bench world-sources
