#!/usr/bin/env bash
# Install what the project needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# redis-server (through apt-get, only where it is missing) and a virtual environment
# in .venv with the package installed. Safe to run again; prints what it does.
# Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server with apt-get"
  sudo_cmd=""
  [[ "$(id -u)" != "0" ]] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq redis-server >/dev/null
  # The package starts a system-wide service; the project starts its own servers.
fi

if [[ -n "$extras" ]] && ! command -v openssl >/dev/null 2>&1; then
  # The TLS tests (tests/test_tls.py) make their own CA and certificates with openssl.
  echo "setup: installing openssl with apt-get"
  sudo_cmd=""
  [[ "$(id -u)" != "0" ]] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq openssl >/dev/null
fi

if [[ -n "$extras" ]] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; }; then
  # The web UI's tests (tests/test_ui.py) drive Debian's headless Chromium through its
  # chromedriver, named by path: nothing downloads a browser of its own.
  echo "setup: installing chromium and chromium-driver with apt-get"
  sudo_cmd=""
  [[ "$(id -u)" != "0" ]] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq chromium chromium-driver </dev/null >/dev/null
fi

python_bin=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    python_bin="$candidate"
    break
  fi
done
if [[ -z "$python_bin" ]]; then
  echo "setup: Python 3.11 or newer is required (apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $python_bin"
  "$python_bin" -m venv .venv || {
    echo "setup: venv failed; install the venv module (apt-get install python3-venv)" >&2
    exit 1
  }
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup: ready ($(.venv/bin/python --version), $(redis-server --version | cut -d' ' -f3))"
