# agentq: `make dev` runs the platform, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint bench install clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/agentq dev

# Two test sessions side by side (pytest-xdist), each with its own Postgres, Redis, workers
# and RabbitMQ virtual host, a test file to a session: the tests mostly wait on processes.
# PYTEST_ARGS= (empty) runs one session, as it must with TEST_DATABASE_URL / TEST_REDIS_URL
# (sessions sharing servers would sweep each other's runs); PYTEST_ARGS='-k partitions' runs
# some tests, in one session.
PYTEST_ARGS ?= -n 2 --dist loadfile

# The dashboard's browser tests drive Debian's chromium; install it when we can (root).
test: $(STAMP)
	@[ -x /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser tests will skip (or fail under CI)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark, one table (README "Performance"); BENCH_ARGS=--quick for a short run.
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } \
		|| echo "wrk is not installed: the submit benchmark uses its httpx load generator"
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports  # worker/'s layers (pyproject.toml): dependencies point one way

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
