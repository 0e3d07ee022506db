#!/usr/bin/env bash
# Creates .venv at the repo root and installs the project into it.
#   bash scripts/setup.sh          engine only (run the main job)
#   bash scripts/setup.sh test     engine + test dependencies (diffusers oracle, real Blender as bpy,
#                                  Ray Serve for the farm gateway)
# Re-running is cheap: a stamp in .venv skips everything when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="engine"
[ "${1:-}" = "test" ] && extras="engine,test,cluster"   # cluster: Ray Serve, for its tests
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
# One installer for every platform (scripts/install.py, also the add-on's Install Engine):
# creates .venv with $py, keeps a torch 2.13/2.14 already there (e.g. a CUDA build), else
# installs torch 2.13.0 from pip's configured index, then this checkout editable.
"$py" scripts/install.py --dev --extras "$extras" --torch pypi --quiet
# Tests of the Krita plugin run real, headless Krita (kritarunner under Xvfb): install what is
# missing with apt where we may (root or passwordless sudo); otherwise those tests skip and say why.
if [ "${1:-}" = "test" ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  command -v kritarunner >/dev/null 2>&1 || need="$need krita"
  [ -d /usr/lib/python3/dist-packages/PyQt5 ] || need="$need python3-pyqt5"
  command -v Xvfb >/dev/null 2>&1 || need="$need xvfb"
  if [ -n "$need" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && sudo="sudo -n"; }
    if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
      echo "setup.sh: apt-get install$need (for the Krita plugin tests)"
      { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
          --no-install-recommends $need; } >/dev/null 2>&1 \
        || echo "setup.sh: could not install$need; the Krita tests will skip"
    else
      echo "setup.sh:$need missing and apt needs root; the Krita tests will skip"
    fi
  fi
fi
