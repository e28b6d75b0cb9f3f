# syntax=docker/dockerfile:1
# pivotrl_nemo on an NGC framework container that already has megatron-core, Transformer Engine
# and vLLM for its CUDA. This package is installed on top; the GPU stack (torch, Triton, TE,
# vLLM, flash-attn, NVIDIA libraries) stays exactly the base image's and no base package is
# downgraded (launchers/container_constraints.py; the build fails, naming the conflict, otherwise).
#
# Build:
#   docker build -t pivotrl:latest .
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/nemo:<tag> -t pivotrl:<tag> .
# Run (one node):
#   docker run --rm -it --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#     -v $PWD/runs:/workspace/runs pivotrl:latest pivotrl run experiment=quickstart
# Slurm with pyxis/enroot (docs/cluster.md):
#   enroot import -o pivotrl.sqsh dockerd://pivotrl:latest
#   CONTAINER_IMAGE=$PWD/pivotrl.sqsh sbatch --nodes=2 --gpus-per-node=8 launchers/pivot_rl.slurm train ...
ARG BASE_IMAGE=nvcr.io/nvidia/nemo-rl:v0.5.0
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false PIVOTRL_CACHE=/opt/pivotrl_nemo/cache
WORKDIR /opt/pivotrl_nemo

# 1. What the base provides. Python 3.12 and a CUDA torch are required; the rest is reported.
COPY launchers/container_constraints.py launchers/
RUN python -m pip --version >/dev/null 2>&1 || python -m ensurepip --upgrade
RUN python - <<'PY'
import importlib, sys
assert sys.version_info[:2] >= (3, 12), f"pivotrl_nemo needs Python >= 3.12; the base has {sys.version}"
import torch
assert torch.version.cuda, "the base image's torch is a CPU build"
print(f"base: python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
for mod in ("megatron.core", "transformer_engine", "vllm", "apex", "flash_attn"):
    try:
        m = importlib.import_module(mod)
        print(f"base: {mod} {getattr(m, '__version__', '(present)')}")
    except Exception as e:  # reported, not fatal: megatron-core is installed below, the others are optional
        print(f"base: {mod} not importable ({type(e).__name__}: {e})")
PY
RUN python launchers/container_constraints.py snapshot base-versions.json \
 && python launchers/container_constraints.py constraints base-versions.json > base-constraints.txt

# 2. This package on top, resolved against those constraints, then verified.
COPY setup.py requirements-nodeps.txt ./
COPY pivotrl_nemo pivotrl_nemo
COPY kernels kernels
COPY conf conf
COPY launchers launchers
RUN python -m pip install -c base-constraints.txt '.[dev]' \
 && python -m pip install --no-deps -r requirements-nodeps.txt \
 && python launchers/container_constraints.py check base-versions.json \
 && python -c "import megatron.core, pivotrl_nemo.cli, pivotrl_nemo.rollout.vllm, pivotrl_nemo.weight_sync.vllm_sync" \
 && pivotrl --help >/dev/null

# The tests travel with the image: GPU checks run inside it (pytest tests/unit tests/gpu).
COPY tests tests
WORKDIR /workspace
CMD ["bash"]
