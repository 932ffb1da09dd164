#!/usr/bin/env bash
# One command: set up .venv and run the mtmg demo end to end on generated data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m mtmg.demo --out "${1:-demo-out}" "${@:2}"
