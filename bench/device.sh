#!/usr/bin/env bash
# Run on a lent GPU machine (the `device` tool), from the repository root:
#   the `gpu`-marked tests, then `bench.models` (torch eager FP32 vs torch FP16 eager and
#   compiled, ONNX Runtime CUDA and TensorRT where installed; and the CPU rows of that host).
# Carry .whl (bench/device_wheels.sh); the weights are the shipped bundle's (tracked). The
# results land in $OUT: gpu-tests.log, models_gpu.json, bench-models.log, nvidia-smi.txt.
# Back here: copy models_gpu.json to docs/bench/models_gpu.json and run
# `python -m bench.report` (it keeps this machine's CPU rows and takes the GPU section
# from that file). See bench/README.md, "On a lent GPU machine".
set -uo pipefail
OUT=${OUT:-/tmp/fame-device-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/appliance/runtime \
  2>&1 | tee "$OUT/gpu-tests.log"
python3 -m bench.models --repeats "${REPEATS:-5}" --out "$OUT/models_gpu.json" \
  2>&1 | tee "$OUT/bench-models.log"
