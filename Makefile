# One entry point for developers and CI (CI runs `make test`, exactly as a developer would).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2

.PHONY: run install install-test test-deps assets fmt lint typecheck contracts unit test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The dashboard's front-end packages (xterm.js for its terminal), from the npm registry by the
# lockfile; served from web/node_modules as they are (no build output, nothing committed).
web/node_modules/.installed: web/package.json web/package-lock.json
	@if command -v npm >/dev/null; then cd web && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the dashboard runs without its terminal tab (install Node.js and npm)"; fi

assets: web/node_modules/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Slurm, OpenSSH clients, Chromium, npm: installed where this user may, else one line each on
# what skips and how to get it (JOBYARD_TEST_INSTALL=0: never install).
test-deps:
	@.ci/test-deps.sh

run: install assets
	$(BIN)/jobyard server

fmt: install-test
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install-test
	$(BIN)/mypy

contracts: install-test
	$(BIN)/lint-imports

test: test-deps lint typecheck contracts assets
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install-test
	$(BIN)/pytest $(PYTEST_ARGS) -m "not slow and not postgres"

bench: install-test  # the test extra brings Ray's client for the `ray` scenario
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
