# Quick start:  make demo   (set-up + the demo)     make test   (set-up + the test suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Installs resolve to the tested set in constraints.txt, so an upstream release cannot break a fresh clone.
$(BIN)/subjectgen: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(BIN)/subjectgen

demo: setup
	$(BIN)/subjectgen demo --out demo

test: setup
	$(BIN)/python -m pytest -q --durations=15  # the slowest tests: CI must end well under 20 minutes

# The emoji sources, needed only to re-render the world (`subjectgen world build/train`) and by its tests.
world-sources:
	apt-get install -y fonts-noto-color-emoji
	npm install --prefix $(HOME)/.cache/subjectgen/npm emoji-datasource-twitter@16.0.0

bench: setup
	$(BIN)/python benchmarks/run_all.py

# After a deliberate upgrade of the venv (and a green make test): write its versions as the tested set.
lock:
	{ sed -n '/^#/p' constraints.txt; { $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v -e '^subjectgen' -e '^torchao==' -e '^bitsandbytes[= ]' | sed 's/+cpu$$//'; \
	  grep -e '^torchao==' -e '^bitsandbytes==' constraints.txt; } | sort -f; } > constraints.txt.tmp  # the quantization extra: tested by .ci/run
	mv constraints.txt.tmp constraints.txt

.PHONY: setup demo test bench world-sources lock
