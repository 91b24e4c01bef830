#!/usr/bin/env bash
# The bench suite on a GPU machine, about 10 minutes: the side-by-side table with AMP off and on,
# one search step at the paper's configuration (96^3, L=12, D=4, 16 filters), sliding-window
# inference, and the memory-budget sweep with the estimated training memory against
# torch.cuda.max_memory_allocated (budget runs, and the published architecture at the paper's
# retraining setting with AMP off and bf16), and selective recomputation against MONAI (bench/recompute.py:
# none / all / auto at half of MONAI's saved bytes / fp16, saved bytes and torch.cuda.max_memory_allocated
# per side, at 64^3 and 96^3). Needs `pip install -e .[bench]`. Record the output in
# bench/README.md with card and date.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "bench/gpu.sh needs a CUDA device"
print(torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
python -m bench --quick --device cuda
python -m bench --quick --device cuda --amp
python -m bench --paper-step --device cuda --amp
python bench/predict.py --device cuda --filters 16 --size 192 192 160 --patch 96 --stride 48
python bench/sigma_sweep.py --device cuda --joint-iters 40 --out /tmp/nastk-sigma-gpu --quiet
python bench/recompute.py --device cuda --patch 64 --filters 16 --rounds 8 --memory-steps 3
python bench/recompute.py --device cuda --patch 96 --filters 16 --rounds 8 --memory-steps 3
