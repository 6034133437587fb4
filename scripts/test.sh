#!/usr/bin/env bash
# Install with the dev tools, then lint (ruff), type-check (mypy) and run the tests.
# The tests start their own redis-server and Celery workers on free ports.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fleet).
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
echo "test: pytest"
.venv/bin/python -m pytest -q "$@"
