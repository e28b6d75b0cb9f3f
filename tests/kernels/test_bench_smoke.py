"""kernels/bench.py: the --smoke path (tiny shapes, Triton interpreter) and the CPU refusal."""

from __future__ import annotations

import csv
import importlib

import pytest
import torch


def _bench(kern):
    return importlib.import_module(kern.__name__ + ".bench")


def test_bench_smoke_writes_csv_and_markdown(interp, tmp_path, capsys):
    bench = _bench(interp)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    with (tmp_path / "kernel_bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    timed = {(r["method"], r["tokens"]): r for r in rows if r["tokens"]}
    for n in bench.SMOKE_SHAPE["tokens"]:
        for method in ("pivotrl_triton", "torch_eager", "lm_head_gemm_floor"):
            row = timed[(method, str(n))]
            assert float(row["fwd_bwd_ms"]) > 0 and float(row["fwd_ms"]) > 0, row
            assert row["device"].startswith("cpu") and row["vocab"] == str(bench.SMOKE_SHAPE["vocab"])
    skipped = {r["method"]: r["note"] for r in rows if not r["tokens"]}
    assert {"torch_compile", "liger_flce", "cut_cross_entropy"} <= set(skipped)
    assert all(note.startswith("skipped: ") for note in skipped.values())
    md = (tmp_path / "kernel_bench.md").read_text()
    assert "device: cpu" in md and "| pivotrl_triton |" in md and "| lm_head_gemm_floor |" in md
    assert "| pivotrl_triton |" in capsys.readouterr().out


def test_bench_refuses_without_cuda(kern, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs CUDA"):
        _bench(kern).main(["--out", str(tmp_path)])
    assert not (tmp_path / "kernel_bench.csv").exists()
