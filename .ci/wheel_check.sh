#!/usr/bin/env bash
# What `pip install` delivers, used the way a lab on Colab uses it: build the sdist and the wheel,
# check them (twine), install the wheel (not editable) into a fresh venv, and from a folder outside
# the repository run the CLI, the fast tests and solutions 03 and 06 in quick mode against that
# installed package.
#
#   .ci/wheel_check.sh [PYTHON [PIP_REQUIREMENT...]]     build, install and run (a temporary folder)
#   .ci/wheel_check.sh --prepare DIR [PYTHON [PIP_REQUIREMENT...]]   build and install into DIR only
#   .ci/wheel_check.sh --run DIR                         run against what --prepare put in DIR
#
# PYTHON makes the venv (default: python); the requirements are installed with the wheel, e.g.
# the oldest versions requirements.txt allows ("tensorflow==2.19.*" "keras==3.10.*"). CI prepares
# while the main test suite runs (installing is mostly waiting on the disk), then runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
stage=all
if [ "${1:-}" = --prepare ] || [ "${1:-}" = --run ]; then
  stage=${1#--}
  work=$(realpath "$2")
  shift 2
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/segkeras-wheel.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
python=${1:-python}
pins=("${@:2}")
venv=$work/venv/bin/python

if [ "$stage" != run ]; then
  mkdir -p "$work"
  python -m pip install --quiet build twine
  python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
  python -m twine check --strict "$work"/dist/*
  wheel=$(echo "$work"/dist/*.whl)
  echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB"
  "$python" -m venv "$work/venv"
  "$venv" -m pip install --quiet "${pins[@]}" "$wheel" jupyter nbval pytest pytest-xdist
fi
[ "$stage" = prepare ] && exit 0

mkdir "$work/run"
cp -r pyproject.toml tests bench solutions "$work/run/"  # copies; they import the installed segkeras
cd "$work/run"
unset PYTHONPATH
export SEGKERAS_QUICK=1 SEGKERAS_WEIGHTS=none KERAS_HOME=$work/keras_home SEGKERAS_CHECKPOINTS=$work/checkpoints
"$venv" - "$repo" <<'PY'
import sys
from pathlib import Path

import keras
import segkeras
import tensorflow

where = Path(segkeras.__file__).resolve()
assert Path(sys.argv[1]).resolve() not in where.parents, f"segkeras imported from {where}"
print(f"segkeras {segkeras.__version__} from {where.parent}; Python {sys.version.split()[0]}, "
      f"TF {tensorflow.__version__}, Keras {keras.__version__}")
PY
"$venv" -m segkeras --version
"$venv" -m segkeras demo --help >/dev/null
"$venv" -m pytest -q -p no:cacheprovider -n 2 -m fast tests
"$venv" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --nbval-lax \
  --sanitize-with solutions/sanitize.cfg \
  solutions/03_unet_transfer_learning.ipynb solutions/06_boxes_to_masks.ipynb
# Lab 3 read the shipped checkpoints: nothing was pretrained and cached on the way.
if [ -e "$KERAS_HOME/segkeras" ]; then
  echo "lab 3 pretrained instead of loading the shipped checkpoints:" "$KERAS_HOME"/segkeras/*
  exit 1
fi
