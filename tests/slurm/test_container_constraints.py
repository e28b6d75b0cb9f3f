"""launchers/container_constraints.py: the Dockerfile's guard against downgrading the NGC base."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HELPER = Path(__file__).resolve().parents[2] / "launchers" / "container_constraints.py"
spec = importlib.util.spec_from_file_location("container_constraints", HELPER)
cc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cc)

BASE = {
    "torch": "2.8.0a0+5228986c39.nv25.6",
    "transformer-engine": "2.5.0+f05f12c9",
    "vllm": "0.10.1.1",
    "nvidia-nccl-cu12": "2.27.3",
    "megatron-core": "0.14.0rc5",
    "transformers": "4.55.4",
    "numpy": "1.26.4",
}


def test_gpu_stack_exact_everything_else_a_floor():
    lines = cc.constraints(BASE)
    assert "torch==2.8.0a0+5228986c39.nv25.6" in lines and "vllm==0.10.1.1" in lines
    assert "transformer-engine==2.5.0+f05f12c9" in lines and "nvidia-nccl-cu12==2.27.3" in lines
    # floors drop local labels (PEP 440 allows them only with ==); upgrades stay possible
    assert "megatron-core>=0.14.0rc5" in lines and "transformers>=4.55.4" in lines and "numpy>=1.26.4" in lines


def test_check_flags_downgrades_pinned_changes_and_removals():
    now = dict(BASE, **{"megatron-core": "0.19.2", "transformers": "5.23.0"})
    problems, upgrades = cc.check(BASE, now)
    assert problems == [] and upgrades == ["megatron-core 0.14.0rc5 -> 0.19.2", "transformers 4.55.4 -> 5.23.0"]
    bad = dict(now, numpy="1.26.0", torch="2.9.0")
    del bad["vllm"]
    problems, _ = cc.check(BASE, bad)
    assert problems == [
        "numpy downgraded 1.26.4 -> 1.26.0",
        "torch changed 2.8.0a0+5228986c39.nv25.6 -> 2.9.0 (the GPU stack must stay the base image's)",
        "vllm 0.10.1.1 was removed",
    ]


def test_cli_roundtrip_on_this_environment(tmp_path):
    snap = tmp_path / "base.json"
    subprocess.run([sys.executable, str(HELPER), "snapshot", str(snap)], check=True)
    assert json.loads(snap.read_text())["torch"]
    out = subprocess.run(
        [sys.executable, str(HELPER), "constraints", str(snap)], check=True, capture_output=True, text=True
    ).stdout
    assert any(line.startswith("torch==") for line in out.splitlines())
    assert subprocess.run([sys.executable, str(HELPER), "check", str(snap)]).returncode == 0
