"""A short PivotRL run on a tiny fixed pivot set raises the reward (real megatron policy, real HF
engine with weight sync, real BFCL execution verifier)."""

import json

import pytest

from pivotrl_nemo.config import load_config
from pivotrl_nemo.pipeline import STAGES, Runner
from pivotrl_nemo.utils.io import atomic_write_jsonl, read_jsonl
from pivotrl_nemo.utils.metrics import read_metrics


@pytest.mark.timeout(900)
def test_reward_rises_on_fixed_pivots(tmp_path):
    cfg = load_config(
        [
            "experiment=tiny",
            f"run_dir={tmp_path}",
            "data.max_trajectories=2",
            "data.split_fractions={sft: 1.0, rl: 0.0, val: 0.0, test: 0.0}",
            "sft.steps=120",
            "sft.batch_size=8",
            "sft.optim.lr=1e-2",
            "algorithm.steps=16",
            "algorithm.prompts_per_step=4",
            "algorithm.group_size=8",
            "algorithm.optim.lr=1e-3",
            "algorithm.save_every=8",
            "rollout.batch_size=32",
        ]
    )
    runner = Runner(cfg)
    for name in ("build", "extract", "sft"):
        runner.run(name)
    rows = read_jsonl(tmp_path / "candidates" / "sft.jsonl")[:4]
    atomic_write_jsonl(tmp_path / "pivots.jsonl", rows)  # a fixed pivot set, seen in SFT
    STAGES.get("train").fn(Runner(cfg).context())
    rewards = [m["train/reward_mean"] for m in read_metrics(tmp_path / "train" / "metrics.jsonl")]
    assert len(rewards) == 16
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert first < 0.9, f"pivots should not start solved: {rewards}"
    assert last > first + 0.1, f"reward did not rise: {rewards}"
    state = json.loads((tmp_path / "train" / "trainer_state.json").read_text())
    assert state["step"] == 16
