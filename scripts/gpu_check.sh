#!/usr/bin/env bash
# The GPU check, prepared for a task that is lent one (docs/distributed.md, "When a GPU is lent"):
# the device tests, the floor benchmark's matmul rates and scoring on the GPU, and the COCO-5K
# all-pairs time measured there for the paper-size configs. A few minutes on an H100/H200.
#
#   OUT=results/gpu bash scripts/gpu_check.sh
#
# It runs from the working tree (PYTHONPATH=src) with the machine's own python3 and torch; a package
# of itm's that machine lacks travels as a wheel (/work/.library/device/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv" || status=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/torch.txt"
python3 -m pytest tests/test_devices.py tests/test_engine.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt" || status=1
python3 benchmarks/floor.py --device cuda --budget 2 --json "$OUT/floor.json" 2>&1 | tee "$OUT/floor.txt" || status=1
python3 benchmarks/coco5k_estimate.py --device cuda --budget 2 \
    --configs bssan_paper caan_paper mlasm_paper bssan_cpu_lite2 caan_cpu mlasm_cpu \
    --json "$OUT/coco5k.json" 2>&1 | tee "$OUT/coco5k.txt" || status=1
exit $status
