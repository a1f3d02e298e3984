#!/usr/bin/env bash
# The test command: install Flame with its dev tools, then lint, type-check, test.
# Usage: bash scripts/check.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
python -m pytest "$@"
