#!/usr/bin/env bash
# Install everything (venv, requirements, Debian's chromium) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.venv/numba_cache}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
