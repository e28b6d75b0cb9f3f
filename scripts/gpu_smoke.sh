#!/usr/bin/env bash
# GPU smoke test for a machine without internet (see scripts/gpu_smoke.py for what it checks).
#
#   bash scripts/gpu_smoke.sh [OUT_DIR]
#
# Needs a CUDA GPU, Python 3.12 and torch with CUDA (e.g. an NGC PyTorch image). Whatever of the
# project's dependencies is missing is installed from wheels carried in WHEELS_DIR (default
# ./wheels), never from the network; make them on a machine with internet:
#
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels megatron-core==0.19.2 hydra-core omegaconf transformers safetensors tokenizers \
#       huggingface-hub psutil tqdm pyyaml regex
#
# Then: GPU kernel parity tests (pytest -m gpu), the kernel benchmark, and gpu_smoke.py
# (conversion, bf16 training with the fused kernel and the TE spec when available, the
# distributed optimizer, a dist-checkpoint round trip). Results land in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_smoke_out}"
WHEELS_DIR="${WHEELS_DIR:-wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible")'
if ! "$PY" -c 'import megatron.core, hydra, transformers' 2>/dev/null; then
  [ -d "$WHEELS_DIR" ] || { echo "missing dependencies and no $WHEELS_DIR/ with wheels" >&2; exit 2; }
  "$PY" -m pip install --no-index --find-links "$WHEELS_DIR" --no-deps "$WHEELS_DIR"/*.whl
fi
"$PY" -m pip install --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PY' | tee "$OUT/env.txt"
import torch, platform
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| host", platform.node())
PY
status=0
"$PY" -m pytest -q -m gpu tests/kernels 2>&1 | tee "$OUT/kernel_tests.txt" || status=1
"$PY" -m pivotrl_nemo.kernels.bench --out "$OUT/kernel_bench" 2>&1 | tee "$OUT/kernel_bench.txt" || status=1
"$PY" scripts/gpu_smoke.py --out "$OUT" 2>&1 | tee "$OUT/gpu_smoke.txt" || status=1
echo "gpu_smoke: $( [ $status -eq 0 ] && echo PASSED || echo FAILED ) (outputs in $OUT)"
exit $status
