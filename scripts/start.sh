#!/usr/bin/env bash
# Install (first run only takes minutes) and start the dashboard on http://127.0.0.1:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.venv/numba_cache}"
exec .venv/bin/streamlit run app.py --server.address "${EXPLROBUST_ADDRESS:-127.0.0.1}" \
  --server.port "${EXPLROBUST_PORT:-8501}" --server.headless true --browser.gatherUsageStats false "$@"
