#!/usr/bin/env bash
# The test suite: creates or reuses .venv, installs what it needs, runs pytest (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec python -m pytest tests "$@"
