"""``pivotrl compare`` end to end with tiny budgets (real megatron policy, real BFCL backends):
every arm trains from one pi_0 and is evaluated the same way, ``comparison.json`` has every key,
rollout-turn counts are exact, a re-run retrains nothing, and the random-turn ablation draws
from all candidates."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pivotrl_nemo.cli import main
from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.pipeline.compare.arms import random_turns
from pivotrl_nemo.pipeline.compare.command import units
from pivotrl_nemo.utils.io import read_jsonl
from pivotrl_nemo.utils.metrics import read_metrics

ARMS = ["pi0", "sft", "pivotrl", "pivotrl_random_turns", "pivotrl_strict_reward", "e2e"]
TINY = [
    "experiment=tiny",
    "model.tokenizer_vocab_size=0",
    "data.max_trajectories=8",
    "data.ood_source=toy",
    "data.ood_max_trajectories=6",
    "sft.steps=4",
    "profile.k=2",
    "filter.min_variance=-1.0",  # a 4-step pi_0 solves nothing: keep every candidate as a 'pivot'
    "algorithm.steps=2",
    "algorithm.prompts_per_step=2",
    "algorithm.group_size=2",
    "algorithm.save_every=1",
    "compare.seeds=[0,1]",
    "compare.e2e_steps=1",
    "compare.episode_eval_max=2",
    "compare.val_every=1",
    "compare.val_max_candidates=4",
    "eval.samples_per_candidate=1",
    "rollout.sampling.max_new_tokens=16",
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    run = tmp_path_factory.mktemp("compare")
    assert main(["compare", *TINY, f"run_dir={run}"]) == 0
    return run, json.loads((run / "comparison.json").read_text())


def test_every_arm_and_key(compared):
    run, out = compared
    assert list(out["arms"]) == ARMS
    for name, row in out["arms"].items():
        for key in ("turn_acc", "episode_success", "ood_acc"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
            lo, hi = row[f"{key}_ci95"]
            assert lo <= row[key] <= hi, (name, key)
        for key in ("rollout_turns", "wall_seconds", "seeds"):
            assert key in row, (name, key)
    assert out["arms"]["sft"]["seeds"] == [0, 1] and out["arms"]["pivotrl"]["seeds"] == [0, 1]
    assert out["arms"]["e2e"]["seeds"] == [0]
    for key in ("turn_acc", "episode_success", "ood_acc"):
        d = out["pivotrl_minus_sft"][key]
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert "e2e_turns_to_match" in out and "turn_ratio" in out
    assert (run / "comparison.md").read_text().startswith("# PivotRL comparison")
    for name in ("compare_acc_vs_turns.png", "compare_reward_variance.png", "compare_ood.png"):
        assert (run / "plots" / name).stat().st_size > 0


def test_rollout_turns_are_exact(compared):
    run, out = compared
    cfg = load_config([*TINY, f"run_dir={run}"])
    n_rl = len(read_jsonl(run / "candidates" / "rl.jsonl"))
    piv = out["arms"]["pivotrl"]
    assert piv["rollout_turns"] == 2 * 2 * 2  # steps * prompts_per_step * group_size
    assert piv["profile_turns"] == n_rl * cfg.profile.k
    assert out["arms"]["pivotrl_random_turns"]["profile_turns"] == 0
    assert out["arms"]["sft"]["rollout_turns"] == 0
    rows = read_metrics(run / "compare" / "e2e" / "seed0" / "train" / "metrics.jsonl")
    assert rows and sum(r["rollout/turns"] for r in rows) == rows[-1]["rollout/turns_cumulative"]
    assert out["arms"]["e2e"]["rollout_turns"] == rows[-1]["rollout/turns_cumulative"] > 0
    for seed in (0, 1):
        m = read_metrics(run / "compare" / "pivotrl" / f"seed{seed}" / "train" / "metrics.jsonl")
        assert [r["rollout/turns_cumulative"] for r in m] == [4.0, 8.0]
        assert all("val/turn_acc" in r for r in m)
    sft = read_metrics(run / "compare" / "sft" / "seed0" / "train" / "metrics.jsonl")
    assert [r["step"] for r in sft] == [1, 2] and all("val/turn_acc" in r for r in sft)  # curves for SFT too


def test_random_turn_rows_come_from_the_rl_candidates(compared):
    run, _ = compared
    rl = {r["id"] for r in read_jsonl(run / "candidates" / "rl.jsonl")}
    drawn = [r["id"] for r in read_jsonl(run / "compare" / "pivotrl_random_turns" / "seed0" / "rows.jsonl")]
    assert set(drawn) <= rl and len(drawn) == len(set(drawn)) == len(read_jsonl(run / "pivots.jsonl"))


def test_rerun_trains_nothing(compared):
    run, out = compared
    done = sorted((run / "compare").glob("*/seed*/done.json"))
    before = {p: p.stat().st_mtime_ns for p in done}
    assert main(["compare", *TINY, f"run_dir={run}"]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == before
    assert json.loads((run / "comparison.json").read_text())["arms"] == out["arms"]


def test_random_turns_draw_every_candidate_uniformly():
    rows = [{"id": str(i), "profile": {"mean": 1.0 if i % 2 else 0.0}} for i in range(20)]
    counts = Counter(r["id"] for seed in range(400) for r in random_turns(rows, 5, seed))
    assert set(counts) == {r["id"] for r in rows}  # pivots or not, every turn can be drawn
    assert max(counts.values()) < 2 * min(counts.values())  # 100 expected each
    assert len(random_turns(rows, 50, 0)) == 20


def test_unknown_arm_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'pivotrl'"):
        units(load_config(["compare.arms=[sft,pivotrll]"]))


def test_sigterm_in_an_arm_exits_143_and_the_rerun_resumes_it(tmp_path, monkeypatch):
    """A real SIGTERM to this process while an RL arm trains: the shared loop checkpoints the
    step, ``compare`` exits 143, and the re-run resumes that arm (each step logged once)."""
    import os
    import signal

    from pivotrl_nemo.pipeline.compare import command as cmd

    run = tmp_path / "run"
    args = ["compare", *TINY, f"run_dir={run}", "compare.arms=[pivotrl,sft]", "compare.seeds=[0]"]
    real = cmd.validation_fn

    def preempting(base, cfg, engine):
        val = real(base, cfg, engine)

        def once(step):
            if step == 1 and not (run / "compare" / "pivotrl" / "seed0" / "train" / "checkpoint").exists():
                os.kill(os.getpid(), signal.SIGTERM)  # what Slurm sends at the time limit
            return val(step)

        return once

    monkeypatch.setattr(cmd, "validation_fn", preempting)
    assert main(args) == 143
    unit = run / "compare" / "pivotrl" / "seed0"
    assert (unit / "train" / "PREEMPTED").read_text().strip() == "1" and not (unit / "done.json").exists()
    assert not (run / "compare" / "sft").exists()  # the command stopped: later arms did not start
    assert main(args) == 0
    assert (run / "compare" / "sft" / "seed0" / "done.json").exists()
    assert [r["step"] for r in read_metrics(unit / "train" / "metrics.jsonl")] == [1, 2]
    assert json.loads((unit / "done.json").read_text())["rollout_turns"] == 8


def test_an_arm_retrains_only_when_a_setting_it_reads_changes():
    from pivotrl_nemo.pipeline.compare.command import _train_fingerprint

    def fps(*overrides):
        cfg = load_config(list(overrides))
        return {arm: _train_fingerprint(cfg, arm, "base") for arm in ARMS[1:]}

    base = fps()
    sft_changed = fps("compare.sft_steps=7")
    e2e_changed = fps("compare.e2e_steps=7")
    shared = fps("algorithm.clip_high=0.3")
    assert {a for a in base if base[a] != sft_changed[a]} == {"sft"}
    assert {a for a in base if base[a] != e2e_changed[a]} == {"e2e"}
    assert all(base[a] != shared[a] for a in base)  # the shared RL sections still reach every arm
