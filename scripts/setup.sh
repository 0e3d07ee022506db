#!/usr/bin/env bash
# Creates .venv at the repo root and installs the project into it.
#   bash scripts/setup.sh          engine only (run the main job)
#   bash scripts/setup.sh test     engine + test dependencies (diffusers oracle, real Blender as bpy)
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="engine"
[ "${1:-}" = "test" ] && extras="engine,test"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.installed-$extras-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned first so pip takes the local wheel (CPU here); with CUDA, install a CUDA build of the
  # same range instead (see README).
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
