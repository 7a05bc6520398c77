#!/usr/bin/env bash
# The prepared GPU check (<= 8 min on one GPU): s/iter and peak memory of R50-FPN GN Mask R-CNN at
# 800x1333 in fp32/fp16/bf16, SyncBN at world size 1, a 200-image evaluation with the GPU paste, and a
# SIGUSR2 mid-run + resume; one table at the end (benchmarks/gpu_check.py says what each row is).
#
# The GPU machine may reach no package index and bring its own Python and torch. So:
#   1. where pip works (a checkout with its .venv):   make gpu-wheels
#      = pip download --python-version 3.12 --only-binary=:all: of what rethink needs besides torch
#        (pycocotools, fvcore, iopath, submitit, hotcoco, faster-coco-eval and their dependencies)
#        into .gpu-wheels/ (git-ignored; carry it with the checkout). GPU_PYTHON_VERSION=3.11 etc. for another Python.
#   2. on the GPU machine, from the checkout:          bash benchmarks/gpu_check.sh
#      installs those wheels with --no-index (keeping the machine's own torch/torchvision), puts the
#      checkout on PYTHONPATH (no build step), and runs the check. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import pycocotools, fvcore, iopath, submitit, hotcoco" 2>/dev/null; then
  if [ ! -d .gpu-wheels ]; then
    echo "gpu_check: missing packages and no .gpu-wheels/ folder; run 'make gpu-wheels' where pip works" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --find-links .gpu-wheels pycocotools fvcore iopath submitit hotcoco \
    faster-coco-eval pyyaml tqdm
fi
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
