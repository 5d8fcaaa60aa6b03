#!/usr/bin/env bash
# The GPU checks in one call, sized for a lent machine's short lease (about 6 minutes on an H200):
# the CUDA tests, then the GPU training benchmark (logs under $OUT, or ./gpu-check when OUT is unset).
#
#   bash bench/gpu_check.sh [extra arguments for bench/gpu_throughput.py]
#
# It runs on the machine's own python3 and packages. If bitsandbytes is missing there, install it beside the
# repo first and put it on PYTHONPATH (a folder `.whl/site` in the repo root is picked up).
set -uo pipefail
cd "$(dirname "$0")/.."
logs="${OUT:-gpu-check}"
mkdir -p "$logs"
export PYTHONPATH="$PWD/.whl/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv | tee "$logs/gpu.txt"
python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)" | tee -a "$logs/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_checkpoint.py 2>&1 \
    | tee "$logs/tests.log" | tail -15
timeout 420 python3 bench/gpu_throughput.py --sizes 1b,3b,0.5b --timeout 150 --out /tmp/loraforge-gpu-bench "$@" 2>&1 \
    | grep -v -i warn | tee "$logs/bench.log"
