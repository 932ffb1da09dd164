#!/usr/bin/env bash
# One command: set up .venv, lint, and run the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check mtmg data_prep sweeps bench tests
.venv/bin/ruff format --check mtmg data_prep sweeps bench tests
exec .venv/bin/python -m pytest tests "$@"
