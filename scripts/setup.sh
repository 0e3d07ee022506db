#!/usr/bin/env bash
# Creates .venv at the repo root and installs the project into it.
#   bash scripts/setup.sh          engine only (run the main job)
#   bash scripts/setup.sh test     engine + test dependencies (diffusers oracle, real Blender as bpy)
# Re-running is cheap: a stamp in .venv skips everything when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="engine"
[ "${1:-}" = "test" ] && extras="engine,test"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
# One installer for every platform (scripts/install.py, also the add-on's Install Engine):
# creates .venv with $py, keeps a torch 2.13/2.14 already there (e.g. a CUDA build), else
# installs torch 2.13.0 from pip's configured index, then this checkout editable.
"$py" scripts/install.py --dev --extras "$extras" --torch pypi --quiet
