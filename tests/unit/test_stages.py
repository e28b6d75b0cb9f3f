"""The stage runner: idempotent re-runs, stale upstream outputs refused, stale partial state discarded."""

import pytest

from pivotrl_nemo.config import load_config
from pivotrl_nemo.pipeline import Runner


def _runner(tmp_path, *extra):
    return Runner(load_config(["experiment=tiny", f"run_dir={tmp_path}", "model.tokenizer_vocab_size=0", *extra]))


def test_rerun_is_a_noop_and_stale_upstream_is_refused(tmp_path, caplog):
    r = _runner(tmp_path)
    r.run("build")
    r.run("extract")
    before = (tmp_path / "candidates" / "rl.jsonl").stat().st_mtime_ns
    r.run("extract")  # same config: nothing happens
    assert (tmp_path / "candidates" / "rl.jsonl").stat().st_mtime_ns == before
    changed = _runner(tmp_path, "data.split_seed=5")
    with pytest.raises(RuntimeError, match="stage 'build' .* another configuration"):
        changed.run("extract")


def test_partial_state_of_another_configuration_is_discarded(tmp_path):
    r = _runner(tmp_path)
    train = tmp_path / "train"
    train.mkdir(parents=True)
    (train / ".fingerprint").write_text("old\n")
    (train / "metrics.jsonl").write_text('{"step": 1}\n')
    r._reset_stale_state("train", "new")
    assert not (train / "metrics.jsonl").exists()
    assert (train / ".fingerprint").read_text().strip() == "new"
    (train / "metrics.jsonl").write_text('{"step": 1}\n')
    r._reset_stale_state("train", "new")  # same configuration: an interrupted stage keeps its work
    assert (train / "metrics.jsonl").exists()
