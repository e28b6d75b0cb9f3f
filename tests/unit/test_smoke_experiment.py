"""``pivotrl run experiment=smoke``, the installation check, runs every stage and finds pivots
(issue 10, finding 12: on BFCL with a seconds-trained pi_0 it stopped at the filter with none);
and the ``toy`` domain it runs on builds the same valid trajectories on every machine."""

from __future__ import annotations

import json

from pivotrl_nemo.cli import main
from pivotrl_nemo.config import load_config
from pivotrl_nemo.data.trajectory import validate_trajectory
from pivotrl_nemo.domains.toy import TOY_TRAJECTORIES, ToyDomain
from pivotrl_nemo.pipeline import STAGES


def test_toy_trajectories_are_valid_and_deterministic():
    cfg = load_config(["experiment=smoke"])
    assert cfg.data.source == "toy" and cfg.verifier.name == "tool_call_args"
    a, info = ToyDomain(cfg.data).trajectories()
    b, _ = ToyDomain(cfg.data).trajectories()
    assert a == b and len(a) == TOY_TRAJECTORIES and info == {"skipped_invalid": 0}
    assert len({t["id"] for t in a}) == len(a)
    for t in a:
        assert validate_trajectory(t) == [], t["id"]
    # the requests vary: every tool is used and arguments are not all the same
    calls = [m["tool_calls"][0]["function"] for t in a for m in t["messages"] if m.get("tool_calls")]
    assert {c["name"] for c in calls} == {"get_weather", "convert_currency", "send_email"}
    assert len({c["arguments"] for c in calls}) > len(calls) // 3


def test_smoke_run_finds_pivots_and_reports(tmp_path):
    run = tmp_path / "smoke"
    assert main(["run", "experiment=smoke", f"run_dir={run}"]) == 0
    summary = json.loads((run / "filter_summary.json").read_text())
    assert summary["pivots"] > 0, summary
    assert summary["dropped"].get("zero_variance_all_fail", 0) < summary["candidates"]
    report = json.loads((run / "report.json").read_text())
    assert report["n_pivots"] == summary["pivots"] and report["n_eval"] > 0
    assert set(report["stages"]) >= set(STAGES.names()) - {"report"}
    assert (run / "report.md").is_file()
