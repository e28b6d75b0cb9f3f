"""bench/data_scale.py at N=10K (the smoke run of issue 16): every stage runs in its own process
on real BFCL-shaped candidates, the ranks' shards add up to the file, and the table is printed.
The targets (seconds, RSS) are the benchmark's to report (docs/benchmarks.md), not asserted here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data_scale.py"


def test_data_scale_bench_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("data_scale", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "m.json"
    assert bench.main(["--candidates", "10000", "--ranks", "8", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    with capsys.disabled():  # the smoke run's table in the `make test` output
        print("\n" + table)
    for stage in ("extract", "validate", "profile_load", "profile_merge", "filter", "train_load"):
        assert f"| {stage}" in table
    m = json.loads(out.read_text())
    st = m["stages"]
    assert m["n"] >= 10_000 and st["extract"][0]["rows"] == m["n"] and st["validate"][0]["invalid"] == 0
    shares = [r["rows"] for r in st["profile_load"]]
    assert len(shares) == 8 and sum(shares) == m["n"] and max(shares) < m["n"] / 4  # each rank its own share
    pivots = st["filter"][0]["pivots"]
    assert 0 < pivots < m["n"] and all(r["rows"] == pivots for r in st["train_load"])
    # the compact rows hold far less than the ~17 KB per row on disk
    assert all(r["held_bytes"] / r["rows"] < m["disk"]["candidates_bytes_per_row"] / 4 for r in st["profile_load"])
