"""Install pivotrl_nemo into an NGC container without downgrading what the container provides.

Used by the Dockerfile, in three steps:

    python container_constraints.py snapshot base.json       # versions the base image ships
    python container_constraints.py constraints base.json    # pip constraints (stdout)
    python container_constraints.py check base.json          # after `pip install -c ...`: verify

The constraints pin the GPU stack (torch, Triton, Transformer Engine, vLLM, flash-attn, apex,
NVIDIA libraries: builds made for the container's CUDA) to exactly the base's versions, and every
other base package to at least its base version. pip then either installs this package on top or
fails with the conflicting requirement named; ``check`` fails the build if anything was
downgraded or a pinned package changed, and lists what was upgraded.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata

EXACT = re.compile(
    r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|transformer-engine.*|vllm|flash-attn.*|"
    r"flashinfer.*|apex|xformers|nvidia-.*|cupy.*|tensorrt.*|nvfuser.*|cuda-.*|deep-ep|deep-gemm)$"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    out = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            out[canonical(name)] = d.version
    return out


def public(version: str) -> str:
    """The public part of a version (PEP 440 forbids local labels in >= specifiers)."""
    return version.split("+", 1)[0]


def older(a: str, b: str) -> bool:
    """Whether version ``a`` is older than ``b`` (PEP 440; unparsable versions never count as older)."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pip always vendors it
        from pip._vendor.packaging.version import InvalidVersion, Version
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return False


def constraints(base: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(base):
        v = base[name]
        lines.append(f"{name}=={v}" if EXACT.match(name) else f"{name}>={public(v)}")
    return lines


def check(base: dict[str, str], now: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, upgrades) between the base snapshot and the current environment."""
    problems, upgrades = [], []
    for name, v in sorted(base.items()):
        cur = now.get(name)
        if cur is None:
            problems.append(f"{name} {v} was removed")
        elif cur != v and EXACT.match(name):
            problems.append(f"{name} changed {v} -> {cur} (the GPU stack must stay the base image's)")
        elif older(cur, v):
            problems.append(f"{name} downgraded {v} -> {cur}")
        elif cur != v:
            upgrades.append(f"{name} {v} -> {cur}")
    return problems, upgrades


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("snapshot", "constraints", "check"):
        sys.stderr.write(__doc__ or "")
        return 2
    cmd, path = argv
    if cmd == "snapshot":
        with open(path, "w") as f:
            json.dump(installed(), f, indent=1, sort_keys=True)
        return 0
    with open(path) as f:
        base = json.load(f)
    if cmd == "constraints":
        sys.stdout.write("\n".join(constraints(base)) + "\n")
        return 0
    problems, upgrades = check(base, installed())
    for u in upgrades:
        sys.stdout.write(f"upgraded: {u}\n")
    for p in problems:
        sys.stderr.write(f"error: {p}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
