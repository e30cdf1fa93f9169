# Quick start: `make run` serves the relay and dashboard against the built-in
# gateway simulator; `make test` runs lint, type checks and the whole test suite.
# Both create .venv and install what they need the first time.

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: run test lint typecheck pytest compat browser redis bench schema screenshots clean

run: $(STAMP)
	$(BIN)/usage-monitor serve --demo

test: $(STAMP) browser redis lint typecheck pytest compat

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,redis]'
	touch $@

# The dashboard tests drive Debian's Chromium; Playwright's own browser
# download cannot be used, so the system package is installed when missing.
browser:
	@.ci/ensure-chromium

# The Redis mode's tests start Debian's redis-server on free loopback ports; the system
# package is installed when missing, and its own service is not started.
redis:
	@.ci/ensure-redis

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Four workers on two cores: most tests spend their time waiting on sockets, child processes
# and Chromium, so twice the cores finishes the suite about a quarter sooner.
pytest: $(STAMP)
	$(BIN)/pytest -n 4

# relay/fastpath.py reads uvicorn internals: the relay's tests run again on the lowest
# and the newest uvicorn that pyproject.toml's pin allows (each cached under .venv).
compat: $(STAMP)
	$(BIN)/python .ci/uvicorn_compat.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

schema: $(STAMP)
	$(BIN)/python -m relay.schema docs/schema

# Regenerates the pictures in docs/images/ from the test suite's helpers.
screenshots: $(STAMP) browser
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q -k screenshot

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
