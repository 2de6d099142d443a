#!/usr/bin/env bash
# Create .venv with Python >= 3.12 and install llmnas-transfer with its dev extras.
# Usage: bash scripts/bootstrap.sh   (idempotent; set VENV=path to use another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

find_python() {
  for cand in python3.12 python3.13 python3; do
    for env in "" "PYENV_VERSION=3.12.1" "PYENV_VERSION=3.13.0"; do
      if out=$(env $env "$cand" -c 'import sys; print(sys.version_info >= (3, 12))' 2>/dev/null) \
         && [ "$out" = "True" ]; then
        echo "env $env $cand"; return 0
      fi
    done
  done
  for p in /root/.pyenv/versions/3.12*/bin/python3 /root/.pyenv/versions/3.13*/bin/python3 \
           /usr/bin/python3.12 /usr/bin/python3.13; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  echo "error: Python >= 3.12 not found (arviz 1.x and jax 0.12 need it)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python)
  echo "creating $VENV with: $PY"
  $PY -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -c 'import llmnas_transfer, sys; print("llmnas-transfer", llmnas_transfer.__version__, "on Python", sys.version.split()[0])'
