# Two entry points do all set-up on a fresh machine (see README):
#   make demo   - the whole pipeline offline on the embedded synthetic stack
#   make test   - the test suite (starts its own PostgreSQL + stac-fastapi-pgstac on 127.0.0.1)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The base install (make demo) is the CPU pipeline: no torch. The dev install adds the `vlm`
# extra for the VLM prior's tests: torch first, pinned to the CPU wheel this machine kind
# carries, so the extra's looser pin installs nothing more (without it pip would pull a
# multi-GB CUDA build).
TORCH ?= torch==2.13.0

.PHONY: demo test install install-dev system-deps lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

system-deps:
	bash .ci/install-system-deps

demo: install
	$(BIN)/phyvlm-cr demo --overwrite $(DEMO_ARGS)

test: install-dev system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check pipeline flows tests
	$(BIN)/ruff format --check pipeline flows tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) phyvlm-demo
