#!/usr/bin/env bash
# Install what explrobust needs into ./.venv (idempotent). With --dev: test tools + Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
reqs=(-r requirements.txt)
if [ "${1:-}" = "--dev" ]; then
  reqs+=(-r requirements-dev.txt)
  if [ ! -x /usr/bin/chromium ]; then
    # the browser tests drive Debian's chromium; never a downloaded browser
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
.venv/bin/pip install --disable-pip-version-check --no-cache-dir -q "${reqs[@]}"
