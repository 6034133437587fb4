#!/usr/bin/env bash
# The main job: install, bring up the local stack (Redis, the API with its services,
# a worker, Flower), run the example flow (a fan-out, a retry, a sensor) through the
# API, print its task states and outcome, and stop everything again.
# Starts a Redis of its own (data in .orchestrator/redis): a Redis already running, on 6379 or
# at ORCHESTRATOR_REDIS_URL, is neither used nor written to.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/orchestrator dev --flows examples.quickstart --run etl -p day=2026-01-02 --exit \
    --api-port 0 --flower-port 0 --data-dir .orchestrator
