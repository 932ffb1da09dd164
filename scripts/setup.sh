#!/usr/bin/env bash
# Create .venv in the repository root and install mtmg with its dependencies (idempotent:
# re-installs only when pyproject.toml or constraints.txt changed). Sourced by demo.sh/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.mtmg-setup 2>/dev/null)" != "$stamp" ]; then
  echo "== installing mtmg and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints.txt -e ".[dev,tracking]"
  echo "$stamp" > .venv/.mtmg-setup
fi
