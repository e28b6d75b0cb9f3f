"""Seconds and peak memory of every data stage at N candidates, per simulated rank.

    python bench/data_scale.py --candidates 10000
    python bench/data_scale.py --candidates 300000 --work /data/scratch --old-loader

Builds the built-in BFCL domain's expert trajectories (the quickstart's), copies them under new
ids until extraction yields at least N candidates (same shape: ~17 KB per row, ~85% of it the
tool list), and runs, each in a fresh process so that its peak RSS is its own:

* extract: trajectories -> ``rl.jsonl`` + its index (streamed);
* validate: ``pivotrl validate`` of the candidates;
* profile load: ``load_pivot_rows(shard=(r, R))`` of every rank r of R (what a Slurm array task or
  data-parallel rank holds before sampling);
* profile merge: the single process that writes ``profiled.jsonl`` (all rows, synthetic K=8
  profiles drawn from the row id: candidates' pass rates uniform on [0, 1]);
* filter: ``profiled.jsonl`` -> ``pivots.jsonl`` at lambda_diff 0.6, streamed;
* train load: ``load_pivot_rows(pivots, lazy=True)`` on every rank, then 256 rows read at random
  (what GRPO steps read);
* with ``--old-loader``: the loader before issue 16 (every row parsed into dicts, whole file), one
  process, for comparison in the same run.

Prints a markdown table (the slowest rank's seconds, the largest rank's peak RSS, memory per row
held) and the machine, the date and the command; ``--json`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("extract", "validate", "profile_load", "profile_merge", "filter", "train_load", "old_loader")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _synthetic_profile(rid: str, k: int = 8) -> dict[str, Any]:
    rng = random.Random(rid)
    p = rng.random()
    rewards = [1.0 if rng.random() < p else 0.0 for _ in range(k)]
    mean = sum(rewards) / k
    return {
        "k": k,
        "rewards": rewards,
        "mean": mean,
        "variance": mean * (1 - mean),
        "categories": ["x"] * k,
        "policy_id": "bench",
    }


def _work(stage: str, w: Path, rank: int, ranks: int) -> dict[str, Any]:
    """One measured stage in this process (the parent starts one process per call). Imports come
    first: the RSS they cost (torch, for modules that pull it in) is reported apart."""
    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.config.schema import FilterConfig
    from pivotrl_nemo.data.jsonl_index import write_indexed_jsonl
    from pivotrl_nemo.data.pivots import validate_file, validate_pivot_row
    from pivotrl_nemo.data.row_store import load_pivot_rows
    from pivotrl_nemo.utils.io import iter_jsonl

    cands, profiled, pivots = w / "rl.jsonl", w / "profiled.jsonl", w / "pivots.jsonl"
    out: dict[str, Any] = {}

    def extract() -> None:
        from pivotrl_nemo.pipeline.candidates import stream_candidates, write_candidates

        verifier = load_config(["experiment=quickstart"]).verifier.name
        trajectories = stream_candidates(w / "trajectories.jsonl", w / "splits.json", ["rl"], "", verifier)
        out["rows"] = write_candidates(trajectories, lambda _: cands)["rl"]["candidates"]

    def validate() -> None:
        rep = validate_file(str(cands))
        out["rows"], out["invalid"] = rep.rows, rep.invalid

    def profile_load() -> Any:
        rows, _ = load_pivot_rows(cands, shard=(rank, ranks))
        out["rows"], out["held_bytes"] = len(rows), rows.nbytes()  # type: ignore[attr-defined]
        return rows

    def profile_merge() -> None:
        from pivotrl_nemo.algorithms.profiling import attach_profile

        rows, _ = load_pivot_rows(cands)
        out["held_bytes"] = rows.nbytes()  # type: ignore[attr-defined]
        gen = (attach_profile(r, _synthetic_profile(r["id"])) for r in rows)
        out["rows"] = write_indexed_jsonl(profiled, gen, validated=True)

    def filter_() -> None:
        from pivotrl_nemo.pipeline.stages.filter import filter_file

        summary, _ = filter_file(profiled, pivots, FilterConfig(lambda_diff=0.6))
        out["rows"], out["pivots"] = summary["candidates"], summary["pivots"]

    def train_load() -> Any:
        t0 = time.perf_counter()
        rows, _ = load_pivot_rows(pivots, lazy=True)
        out["load_seconds"] = time.perf_counter() - t0
        rng = random.Random(rank)
        t1 = time.perf_counter()
        for _ in range(256):
            rows[rng.randrange(len(rows))]
        out["read_ms_per_row"] = (time.perf_counter() - t1) / 256 * 1e3
        out["rows"], out["held_bytes"] = len(rows), rows.nbytes()  # type: ignore[attr-defined]
        return rows

    def old_loader() -> list[dict[str, Any]]:
        rows = [r for _, r in iter_jsonl(cands) if not validate_pivot_row(r)]
        out["rows"] = len(rows)
        return rows  # alive until the RSS is read

    fns: dict[str, Callable[[], Any]] = {
        "extract": extract,
        "validate": validate,
        "profile_load": profile_load,
        "profile_merge": profile_merge,
        "filter": filter_,
        "train_load": train_load,
        "old_loader": old_loader,
    }
    if stage in ("extract", "profile_merge", "filter"):  # what their functions import
        import pivotrl_nemo.algorithms.profiling  # noqa: F401
        import pivotrl_nemo.pipeline.candidates  # noqa: F401
        import pivotrl_nemo.pipeline.stages.filter  # noqa: F401
    rss0, t0 = _status_kb("VmRSS"), time.perf_counter()
    kept = fns[stage]()
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _status_kb("VmHWM") / 1024
    out["import_rss_mb"] = rss0 / 1024
    out["rss_growth_bytes"] = max(0, _status_kb("VmRSS") - rss0) * 1024
    del kept
    return out


def _run(stage: str, w: Path, rank: int = 0, ranks: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", stage, "--work", str(w), "--rank", str(rank), "--ranks", str(ranks)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIVOTRL_LOG_LEVEL": "WARNING"})
    if res.returncode != 0:
        raise RuntimeError(f"{stage} (rank {rank}) failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _make_trajectories(w: Path, n: int) -> int:
    """Copies of the quickstart's BFCL trajectories under new ids until >= n candidates."""
    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.data.extract import eligible
    from pivotrl_nemo.registry import DOMAINS
    from pivotrl_nemo.utils.io import dumps_row

    d = load_config(["experiment=quickstart"]).data
    trajs, _ = DOMAINS.get(d.source)(d).trajectories()
    per = [sum(m["role"] == "assistant" and eligible(t.get("domain", ""), m) for m in t["messages"]) for t in trajs]
    total, copy, ids = 0, 0, []
    with open(w / "trajectories.jsonl", "w", encoding="utf-8") as f:
        while total < n:
            for t, m in zip(trajs, per):
                if total >= n:
                    break
                tid = f"{t['id']}@{copy}"
                f.write(dumps_row({**t, "id": tid}) + "\n")
                ids.append(tid)
                total += m
            copy += 1
    (w / "splits.json").write_text(json.dumps(dict.fromkeys(ids, "rl")))
    return total


def _table(n: int, ranks: int, res: dict[str, list[dict[str, Any]]], disk: dict[str, float]) -> str:
    lines = [
        f"N = {n:,} candidates, {ranks} simulated ranks; {disk['candidates_bytes_per_row']:,.0f} bytes per "
        f"candidate on disk ({disk['candidates_gb']:.2f} GB), index {disk['index_bytes_per_row']:.0f} bytes per row",
        "",
        "| stage | processes | rows per process (max) | seconds (slowest) | peak RSS MB (largest) | "
        "of it imports MB | RSS growth per row (B) | held per row (B) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, rs in res.items():
        rows = max(r["rows"] for r in rs)
        growth = max(r["rss_growth_bytes"] / max(r["rows"], 1) for r in rs)
        held = max((r.get("held_bytes", 0) / max(r["rows"], 1) for r in rs), default=0)
        secs = max(r.get("load_seconds", r["seconds"]) for r in rs)
        extra = ""
        if stage == "train_load":
            extra = f" (then {max(r['read_ms_per_row'] for r in rs):.2f} ms per row read)"
        if stage == "filter":
            extra = f" ({rs[0]['pivots']:,} pivots)"
        lines.append(
            f"| {stage}{extra} | {len(rs)} | {rows:,} | {secs:.1f} | {max(r['peak_rss_mb'] for r in rs):,.0f} | "
            f"{max(r['import_rss_mb'] for r in rs):,.0f} | {growth:,.0f} | {held:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=10_000, help="N: candidates to generate")
    ap.add_argument("--ranks", type=int, default=8, help="simulated ranks (profile and train loading)")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    ap.add_argument("--old-loader", action="store_true", help="also time the pre-index loader (whole file as dicts)")
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    ap.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_work(args.worker, Path(args.work), args.rank, args.ranks)))
        return 0
    w = Path(args.work or tempfile.mkdtemp(prefix="pivotrl-data-scale-"))
    w.mkdir(parents=True, exist_ok=True)
    try:
        n = _make_trajectories(w, args.candidates)
        res: dict[str, list[dict[str, Any]]] = {}
        for stage in ("extract", "validate"):
            res[stage] = [_run(stage, w)]
        res["profile_load"] = [_run("profile_load", w, r, args.ranks) for r in range(args.ranks)]
        if sum(r["rows"] for r in res["profile_load"]) != n:
            raise RuntimeError("the shards do not add up to the file")
        for stage in ("profile_merge", "filter"):
            res[stage] = [_run(stage, w)]
        res["train_load"] = [_run("train_load", w, r, args.ranks) for r in range(args.ranks)]
        if args.old_loader:
            res["old_loader"] = [_run("old_loader", w)]
        size = (w / "rl.jsonl").stat().st_size
        disk = {
            "candidates_bytes_per_row": size / n,
            "candidates_gb": size / 1e9,
            "index_bytes_per_row": (w / "rl.jsonl.idx").stat().st_size / n,
        }
        print(_table(n, args.ranks, res, disk))
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        print(
            f"\n{when}; {machine}; `python bench/data_scale.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"n": n, "ranks": args.ranks, "disk": disk, "stages": res, "when": when, "machine": machine},
                    indent=1,
                )
            )
    finally:
        if args.work is None:
            shutil.rmtree(w, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
