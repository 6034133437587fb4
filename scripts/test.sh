#!/usr/bin/env bash
# Install with the dev tools, then lint (ruff), type-check (mypy) and run the tests.
# The tests start their own redis-server and Celery workers on free ports.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fleet).
# Test files run in parallel, ORCHESTRATOR_TEST_WORKERS (default 2) at a time (pytest-xdist,
# --dist loadfile: a file's tests stay together, in order, in one process with its own Redis and
# workers); most of a test's time is waiting on the processes it starts, not CPU.
# ORCHESTRATOR_TEST_WORKERS=0 runs everything serially in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
echo "test: ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check orchestrator workers api tests examples benchmarks
echo "test: import rules (pyproject.toml [tool.importlinter], docs/architecture.md)"
.venv/bin/lint-imports --no-cache
echo "test: mypy"
.venv/bin/mypy
workers="${ORCHESTRATOR_TEST_WORKERS:-2}"
echo "test: pytest ($workers files at a time; ORCHESTRATOR_TEST_WORKERS=0 runs them serially)"
.venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
