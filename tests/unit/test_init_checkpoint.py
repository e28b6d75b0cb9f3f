"""model.init_checkpoint starts the sft stage from an existing megatron checkpoint; with
sft.steps=0 that checkpoint is pi_0 unchanged and the sft stage writes nothing."""

import torch

from pivotrl_nemo.config import load_config
from pivotrl_nemo.models.megatron import sharding
from pivotrl_nemo.pipeline import Runner


def _weights(cfg, path):
    rt = Runner(cfg).runtime
    policy = rt.new_policy(cfg.sft.optim, total_steps=1)
    policy.load(path, load_optimizer=False)
    return {k: v.clone() for k, v in sharding.iter_full_state(policy)}


def test_sft_starts_from_init_checkpoint(tmp_path):
    common = [
        "experiment=tiny",
        "model.tokenizer_vocab_size=0",  # a checkpoint keeps its tokenizer's ids: no domain BPE
        "data.max_trajectories=2",
        "data.split_fractions={sft: 1.0, rl: 0.0, val: 0.0, test: 0.0}",
    ]
    a = load_config([*common, f"run_dir={tmp_path / 'a'}", "sft.steps=3"])
    runner = Runner(a)
    for name in ("build", "extract", "sft"):
        runner.run(name)
    src = tmp_path / "a" / "sft" / "checkpoint"
    b = load_config(
        [*common, f"run_dir={tmp_path / 'b'}", "sft.steps=0", f"model.init_checkpoint={src}", "model.seed=99"]
    )  # a different random init: the checkpoint must replace it
    runner = Runner(b)
    for name in ("build", "extract", "sft"):
        runner.run(name)
    assert runner.runtime.pi0_checkpoint == src and not (tmp_path / "b" / "sft" / "checkpoint").exists()
    wa, wb = _weights(a, src), _weights(b, runner.runtime.pi0_checkpoint)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
