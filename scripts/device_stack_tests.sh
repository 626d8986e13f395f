#!/usr/bin/env bash
# Runs the detector and benchmark tests here (CPU) on the GPU machine's library versions, before
# any device time is spent: torch 2.11.0, torchvision 0.26.0 and timm 1.0.29, as the H200 machine
# has them (see ../shared/notes/h200-effdet-measurements.md and the device tool's KINDS.md).
# Two breaks were found this way that the CI's newer versions hide: timm 1.0.29's ModelEmaV3
# lacks the helper WeightEma once used, and torch 2.11's Inductor on CPU miscompiles the anchor
# assignment's argmax (the first-step compile check catches it).
#
# Usage, from the repository root:  bash scripts/device_stack_tests.sh [PYTEST ARGS]
# It makes .venv-device/ (ignored) on top of this machine's packages, with those three pinned.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
venv=.venv-device
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q --no-deps torch==2.11.0 torchvision==0.26.0 timm==1.0.29
fi
"$venv/bin/python" -c "import torch, torchvision, timm; print('torch', torch.__version__, \
'torchvision', torchvision.__version__, 'timm', timm.__version__)"
args=("$@")
(( ${#args[@]} )) || args=(tests/detector_tests tests/benchmark_tests)
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "${args[@]}"
