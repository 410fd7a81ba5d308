#!/usr/bin/env bash
# The engine benchmark on one GPU (issue 3, item 6): vgg16 and resnet50, batch 32, 224 px, float32
# against zennit and the plain forward+backward, then bfloat16 and float16 against float32.
# Run from the repository root: bash bench/gpu.sh [python]; JSON into bench/results/.
set -euo pipefail
PY=${1:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
"$PY" bench/run.py --device cuda --batch 32 --targets-batch 8 --precisions bfloat16,float16 \
    --archs vgg16,resnet50 --out bench/results
"$PY" bench/table.py bench/results
