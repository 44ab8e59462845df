# Two commands on a fresh machine with Python 3.11: `make dev` and `make test`.
# Each bootstraps .venv with uv (installed into .venv-uv from PyPI) on first use.
PYTHON ?= python3.11
UV := .venv-uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced

.PHONY: dev test fuzz lint typecheck check bench clean

$(UV):
	$(PYTHON) -m venv .venv-uv
	.venv-uv/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): pyproject.toml uv.lock | $(UV)
	UV_PYTHON=$(PYTHON) $(UV) sync --frozen --compile-bytecode --quiet
	touch $(STAMP)

dev: $(STAMP)  ## start daemon + embedded Postgres and S3 + simulated nodes
	$(VENV)/bin/flatrender dev $(ARGS)

test: $(STAMP)  ## the whole test suite, against real Postgres and S3 started by the session
	$(VENV)/bin/pytest $(ARGS)

fuzz: $(STAMP)  ## schemathesis against a fresh `flatrender dev`; prints cases and findings by class
	$(VENV)/bin/python -m tests.fuzz.run $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check flatrender tests bench
	$(VENV)/bin/ruff format --check flatrender tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: test lint typecheck

clean:
	rm -rf $(VENV) .venv-uv .pytest_cache .mypy_cache .ruff_cache
