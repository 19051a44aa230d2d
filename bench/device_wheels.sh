#!/usr/bin/env bash
# Fetch, on this machine, the wheels the node's code needs on a lent GPU machine (the
# `device` tool) that its image lacks: Python 3.12 there, with torch, onnx, onnxruntime,
# numpy, pillow, opencv and pytest already installed (the device tool's KINDS.md). They go
# to .whl/ (ignored by git through .git/info/exclude), to be carried with `carry: [".whl"]`.
# Usage: bash bench/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types \
  pydicom watchdog cryptography cffi pycparser safetensors
du -sh .whl
