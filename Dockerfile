# syntax=docker/dockerfile:1
# pivotrl_nemo and its GPU stack in ONE Python environment (/opt/venv, first on PATH): vLLM,
# Transformer Engine and megatron-core next to a transformers >= 5.20 that this vLLM accepts,
# then this package on top without replacing or downgrading any of it
# (launchers/container_constraints.py; the build fails, naming the conflict, otherwise).
#
# The versions, each read from the package's published metadata (docs/cluster.md, section 7):
#   vllm 0.33.0            requires transformers>=5.16.1,<5.21.0 and torch==2.14.0 (CUDA 13): the
#                          newest vLLM, and the only one whose cap admits 5.20.
#                          Through 0.18.1 it is <5; 0.19-0.30 set no upper bound (then 0.31.0
#                          capped it: nothing says they work with 5.20); 0.32.0 wants <5.20.
#   transformers 5.20.2    the newest 5.20.x: >=5.20 for this package, <5.21 for vLLM 0.33.0.
#   megatron-core 0.19.2   this package's >=0.19.2,<0.20; needs torch>=2.6, numpy, packaging.
#   transformer-engine[core_cu13,pytorch] 2.20.2   the extras megatron-core's own [te] extra
#                          names. Its torch extension (transformer_engine_torch) is only an sdist
#                          on PyPI, a C++ extension compiled here against vLLM's torch and the
#                          CUDA headers: hence a CUDA *devel* base (compilers, CUDA and cuDNN
#                          headers), the one NeMo-RL builds TE on.
# Why not nvcr.io/nvidia/nemo-rl (the old default, v0.5.0): its default environment is the last
# `uv sync --all-groups` of its Dockerfile, without the vllm and mcore extras that it syncs only to
# warm uv's cache for per-worker Ray venvs, so vLLM, TE and megatron-core are missing where
# pivotrl runs; and v0.5.0 pins vllm 0.11.2 (transformers<5), v0.7.0 transformers<5.9.
#
# Build (needs internet; NVTE_CUDA_ARCHS, Hopper and Blackwell by default, and MAX_JOBS go to TE's build):
#   docker build -t pivotrl:latest .
#   docker build --build-arg NVTE_CUDA_ARCHS="80;90" --build-arg MAX_JOBS=32 -t pivotrl:a100 .
# Run (one node):
#   docker run --rm -it --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#     -v $PWD/runs:/workspace/runs pivotrl:latest pivotrl run experiment=quickstart
# Slurm with pyxis/enroot (docs/cluster.md):
#   enroot import -o pivotrl.sqsh dockerd://pivotrl:latest
#   CONTAINER_IMAGE=$PWD/pivotrl.sqsh sbatch --nodes=2 --gpus-per-node=8 launchers/pivot_rl.slurm train ...
ARG BASE_IMAGE=nvcr.io/nvidia/cuda-dl-base:26.05-cuda13.2-devel-ubuntu24.04
FROM ${BASE_IMAGE}

ARG VLLM_VERSION=0.33.0
ARG TRANSFORMERS_VERSION=5.20.2
ARG MEGATRON_CORE_VERSION=0.19.2
ARG TE_VERSION=2.20.2
ARG NVTE_CUDA_ARCHS="90;100"
ARG MAX_JOBS=8

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false PIVOTRL_CACHE=/opt/pivotrl_nemo/cache \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:${PATH}
WORKDIR /opt/pivotrl_nemo

# 0. Python 3.12 (Ubuntu 24.04's) and the environment everything goes into.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3.12 python3.12-venv python3.12-dev build-essential git \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv \
 && python -m pip install --upgrade pip

# 1. The GPU stack. vLLM brings its torch (and triton, and the NVIDIA libraries as wheels).
RUN python -m pip install "vllm==${VLLM_VERSION}" "transformers==${TRANSFORMERS_VERSION}" \
      "megatron-core==${MEGATRON_CORE_VERSION}"
# Transformer Engine, compiled against that torch (pinned so that pip cannot swap it) and using
# torch's pip cuDNN rather than the base's, as NeMo-RL's Dockerfile does.
ENV CUDNN_HOME=/opt/venv/lib/python3.12/site-packages/nvidia/cudnn \
    CUDNN_PATH=/opt/venv/lib/python3.12/site-packages/nvidia/cudnn \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}
RUN python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > /tmp/torch-pin.txt \
 && NVTE_FRAMEWORK=pytorch NVTE_CUDA_ARCHS="${NVTE_CUDA_ARCHS}" MAX_JOBS="${MAX_JOBS}" \
    python -m pip install --no-build-isolation -c /tmp/torch-pin.txt \
      "transformer-engine[core_cu13,pytorch]==${TE_VERSION}" \
 && rm /tmp/torch-pin.txt

# 2. The check: the image exists for these imports; any failure fails the build, loudly.
RUN python - <<'PY'
import importlib.metadata as md
import sys

from packaging.requirements import Requirement
from packaging.version import Version

import torch
import vllm
import transformer_engine
import transformer_engine.pytorch
import megatron.core
import transformers

assert sys.version_info[:2] == (3, 12), f"pivotrl_nemo needs Python 3.12; the image has {sys.version}"
assert torch.version.cuda, f"torch {torch.__version__} is a CPU build"
assert Version(transformers.__version__) >= Version("5.20"), f"transformers {transformers.__version__} < 5.20"
shared = {"torch", "transformers", "tokenizers", "huggingface-hub", "triton"}
for text in md.requires("vllm") or []:
    req = Requirement(text)
    if req.name.lower().replace("_", "-") not in shared or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    have = md.version(req.name)
    assert req.specifier.contains(have, prereleases=True), f"vllm {vllm.__version__} requires {text}; the image has {have}"
for name, mod in (("vllm", vllm), ("transformer-engine", transformer_engine), ("megatron-core", megatron.core),
                  ("transformers", transformers), ("torch", torch)):
    print(f"gpu stack: {name} {md.version(name)} ({mod.__file__})")
print(f"gpu stack: python {sys.version.split()[0]}, torch CUDA {torch.version.cuda}")
PY

# 3. This package on top, resolved against the stack's versions (pinned exactly: torch, triton,
# TE, vLLM, NVIDIA libraries; at least: the rest), then verified.
COPY launchers/container_constraints.py launchers/
RUN python launchers/container_constraints.py snapshot base-versions.json \
 && python launchers/container_constraints.py constraints base-versions.json > base-constraints.txt
# (pyproject.toml holds the metadata and dependencies, README.md its readme; setup.py the packages)
COPY pyproject.toml setup.py README.md requirements-nodeps.txt ./
COPY pivotrl_nemo pivotrl_nemo
COPY kernels kernels
COPY conf conf
COPY launchers launchers
RUN python -m pip install -c base-constraints.txt '.[dev]' \
 && python -m pip install --no-deps -r requirements-nodeps.txt \
 && python launchers/container_constraints.py check base-versions.json \
 && python -c "import vllm, transformer_engine.pytorch, megatron.core, pivotrl_nemo.cli, pivotrl_nemo.kernels, pivotrl_nemo.conf, pivotrl_nemo.rollout.vllm, pivotrl_nemo.weight_sync.vllm_sync" \
 && pivotrl --help >/dev/null

# The tests travel with the image: GPU checks run inside it (pytest tests/unit tests/gpu).
COPY tests tests
WORKDIR /workspace
CMD ["bash"]
