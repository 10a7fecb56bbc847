#!/usr/bin/env bash
# The test suite: creates or reuses .venv, installs what it needs, checks the code's habits (ruff lint
# and format, the import-linter contract in pyproject.toml), then runs pytest (extra args pass through:
# `bash scripts/test.sh -m "not slow"` is the fast lane).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
ruff check .
ruff format --check .
lint-imports --no-cache --no-logo
exec python -m pytest tests "$@"
