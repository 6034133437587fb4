#!/usr/bin/env bash
# The main job: install, start a private Redis and a worker, run the example flow end
# to end, print its result and task states, and stop everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/orchestrator demo
