#!/usr/bin/env bash
# GPU smoke test for a machine without internet (see scripts/gpu_smoke.py for what it checks).
#
#   bash scripts/gpu_smoke.sh --plan [--offline]        # where PyPI is reachable: the carry set
#   bash scripts/gpu_smoke.sh [OUT_DIR]                 # on the GPU machine
#   bash scripts/gpu_smoke.sh --install-only            # install and check only; needs no GPU
#
# The GPU machine needs Python 3.12 with a CUDA torch and Triton (e.g. the device image: torch
# 2.11 for CUDA 13, triton 3.6). What else the run imports and that image lacks or has too old is
# the carry set, scripts/gpu_smoke_wheels.txt: megatron-core, transformers, hydra-core, omegaconf
# and antlr4-python3-runtime, installed from the wheels in WHEELS_DIR (default .whl, git-ignored)
# with --no-deps, never from the network and never touching the machine's torch. --plan makes
# that folder here (pip download --no-deps for cp312 / manylinux_2_28_x86_64; antlr4 4.9.3 has no
# wheel and is built with pip wheel --no-deps), refuses anything else in it, prints each wheel
# with its size and the total with the working tree, and fails over the 64 MiB a device call
# carries (--offline: measure what is there, download nothing). Then carry WHEELS_DIR.
#
# On the machine: the carried wheels (unless the manifest is already met) and this package
# (pip install -e: kernels/ and conf/ are importable only as setup.py maps them, as
# pivotrl_nemo.kernels and pivotrl_nemo.conf, so a failed install stops here, with pip's error),
# a check that torch is the machine's, untouched, then GPU kernel parity tests (pytest -m gpu),
# the kernel benchmark, and gpu_smoke.py (conversion, bf16 training with the fused kernel and
# the TE spec when available, the distributed optimizer, a dist-checkpoint round trip). Results
# land in OUT_DIR (default gpu_smoke_out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; esac # the import check below runs from /
WHEELS_DIR="${WHEELS_DIR:-.whl}"
CARRY=scripts/gpu_smoke_carry.py

die() {
  local code=$1
  shift
  echo "gpu_smoke: error: $*" >&2
  exit "$code"
}

plan=0
offline=0
install_only=0
OUT=gpu_smoke_out
while [ $# -gt 0 ]; do
  case "$1" in
    --plan) plan=1 ;;
    --offline) offline=1 ;;
    --install-only) install_only=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) die 2 "unknown option $1 (see --help)" ;;
    *) OUT=$1 ;;
  esac
  shift
done

if [ "$plan" -eq 1 ]; then
  plan_args=(plan --wheels-dir "$WHEELS_DIR")
  if [ "$offline" -eq 1 ]; then plan_args+=(--offline); fi
  exec "$PY" "$CARRY" "${plan_args[@]}"
fi

if [ "$install_only" -eq 0 ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible")'
fi

# The machine's torch (and triton) before and after every install below: they must not change.
torch_id() {
  "$PY" - <<'PY'
import importlib.metadata as md
import torch
try:
    triton = md.version("triton")
except md.PackageNotFoundError:
    triton = None
print(f"torch {md.version('torch')} ({torch.__version__}, CUDA {torch.version.cuda}) at {torch.__file__}; triton {triton}")
PY
}
torch_before=$(torch_id)

# 1. The carry set, from WHEELS_DIR, with --no-deps.
if "$PY" "$CARRY" satisfied; then
  echo "gpu_smoke: this Python already meets scripts/gpu_smoke_wheels.txt; no wheel installed"
else
  [ -d "$WHEELS_DIR" ] || die 2 "missing dependencies (above) and no $WHEELS_DIR/ with the carried wheels" \
    "(make it with 'bash scripts/gpu_smoke.sh --plan' where PyPI is reachable, then carry it)"
  "$PY" "$CARRY" plan --offline --no-tree --wheels-dir "$WHEELS_DIR" ||
    die 2 "$WHEELS_DIR/ does not hold the carry set of scripts/gpu_smoke_wheels.txt (above)"
  "$PY" -m pip install --no-index --no-deps --no-cache-dir "$WHEELS_DIR"/*.whl ||
    die 3 "installing the carried wheels from $WHEELS_DIR/ failed (pip's output above)"
fi
"$PY" "$CARRY" check || die 3 "the environment does not meet the GPU run's requirements (above)"

# 2. This package, editable. No PYTHONPATH fallback: it could not import pivotrl_nemo.kernels
# or pivotrl_nemo.conf (setup.py's package_dir), and it would hide why the install failed.
pip_log=$(mktemp)
trap 'rm -f "$pip_log"' EXIT
if ! "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . >"$pip_log" 2>&1; then
  cat "$pip_log" >&2
  die 3 "'pip install --no-index --no-deps --no-build-isolation -e .' failed (pip's output above);" \
    "pivotrl_nemo.kernels and pivotrl_nemo.conf import only from an install (setup.py maps kernels/ and conf/)"
fi
(cd / && "$PY" -c 'import pivotrl_nemo.kernels, pivotrl_nemo.conf') ||
  die 3 "pivotrl_nemo.kernels / pivotrl_nemo.conf do not import after the editable install (above)"

torch_after=$(torch_id)
[ "$torch_after" = "$torch_before" ] ||
  die 4 "the install changed the machine's torch: before: $torch_before; after: $torch_after"
echo "gpu_smoke: $torch_after (the machine's, untouched)"
if [ "$install_only" -eq 1 ]; then
  echo "gpu_smoke: installed and checked (--install-only: nothing run)"
  exit 0
fi

# 3. The checks.
mkdir -p "$OUT"
"$PY" - <<'PY' | tee "$OUT/env.txt"
import torch, platform
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| host", platform.node())
PY
status=0
"$PY" -m pytest -q -m gpu tests/kernels 2>&1 | tee "$OUT/kernel_tests.txt" || status=1
"$PY" -m pivotrl_nemo.kernels.bench --out "$OUT/kernel_bench" 2>&1 | tee "$OUT/kernel_bench.txt" || status=1
"$PY" scripts/gpu_smoke.py --out "$OUT" 2>&1 | tee "$OUT/gpu_smoke.txt" || status=1
echo "gpu_smoke: $([ $status -eq 0 ] && echo PASSED || echo FAILED) (outputs in $OUT)"
exit $status
