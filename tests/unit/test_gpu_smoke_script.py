"""scripts/gpu_smoke.sh and gpu_smoke.py parse, and refuse clearly where there is no GPU (the
checks themselves need CUDA and run on a GPU machine; see the README)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_smoke_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_smoke.sh")], check=True)
    compile((ROOT / "scripts" / "gpu_smoke.py").read_text(), "gpu_smoke.py", "exec")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_gpu_smoke_refuses_without_cuda(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no CUDA device" in r.stderr
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert r.returncode != 0 and "no CUDA GPU visible" in r.stderr
