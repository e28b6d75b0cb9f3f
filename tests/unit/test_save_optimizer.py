"""Weights-only checkpoints (``save_optimizer=False``, issue 14) of the real megatron policy (tiny
MoE, CPU/gloo, world of one): smaller on disk, bit-exact weights, no optimizer entries, refused
by an optimizer load unless a fresh optimizer is allowed; the RL loop's final checkpoint under
``algorithm.save_optimizer=false`` and the sft stage's pi_0."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from by_path import load_module

from pivotrl_nemo.config.schema import AlgorithmConfig, ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.models.megatron.checkpoint import CheckpointError, list_checkpoints, read_meta
from pivotrl_nemo.models.megatron.policy import MegatronPolicy

VOCAB = 256
TINY = ModelConfig(
    hidden_size=64,
    num_layers=2,
    num_attention_heads=4,
    num_query_groups=2,
    head_dim=16,
    num_experts=4,
    moe_ffn_hidden_size=32,
    moe_router_topk=2,
    max_position_embeddings=64,
)
OPTIM = OptimConfig(lr=3e-3, warmup_steps=3)

_cuda_type_names = load_module("tests/dist/cpu_types.py", "cpu_types").cuda_type_names


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


def _policy(seed: int = TINY.seed, distributed: bool = False, dtype: str = "float32") -> MegatronPolicy:
    model = dataclasses.replace(TINY, seed=seed, params_dtype=dtype)
    if not distributed and dtype == "float32":
        return MegatronPolicy(model, VOCAB, OPTIM, total_steps=10)
    with _cuda_type_names():
        return MegatronPolicy(
            model, VOCAB, OPTIM, total_steps=10, parallel=ParallelConfig(use_distributed_optimizer=distributed)
        )


def _train_step(policy: MegatronPolicy, seed: int) -> float:
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(seed))
    policy.zero_grad()
    logits = policy.forward_logits(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    policy.optimizer_step()
    return float(loss.detach())


def _weights(policy: MegatronPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.gpt.state_dict().items() if isinstance(v, torch.Tensor)}


def _assert_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _adam_steps(policy: MegatronPolicy) -> set[float]:
    subs = getattr(policy.optimizer, "chained_optimizers", None) or [policy.optimizer]
    return {
        float(sub.optimizer.state[p]["step"])
        for sub in subs
        for g in sub.optimizer.param_groups
        for p in g["params"]
        if "step" in sub.optimizer.state[p]
    }


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def _stored_keys(d: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(d)).read_metadata().state_dict_metadata)


@pytest.mark.parametrize(
    "distributed, dtype",
    [(False, "float32"), (True, "float32"), (False, "bfloat16")],
    ids=["optimizer", "distributed_optimizer", "bf16"],
)
def test_weights_only_checkpoint(tmp_path, distributed, dtype):
    policy = _policy(distributed=distributed, dtype=dtype)
    for i in range(2):
        _train_step(policy, i)
    full = policy.save(tmp_path / "full")
    light = policy.save(tmp_path / "light", save_optimizer=False)
    meta = read_meta(light)
    assert meta["weights_only"] is True and meta["optimizer_state"] is False
    assert read_meta(full)["weights_only"] is False and read_meta(full)["optimizer_state"] is True
    assert any(k.startswith("optimizer") for k in _stored_keys(full))
    assert not any(k.startswith("optimizer") for k in _stored_keys(light))
    # fp32 model: weights 4 B/param, Adam moments 8 more (bf16: 2 + 4 fp32 main + 8)
    assert _size(light) < 0.5 * _size(full), (_size(light), _size(full))

    weights = _weights(policy)
    other = _policy(seed=99, distributed=distributed, dtype=dtype)
    other.load(light, load_optimizer=False)
    _assert_equal(_weights(other), weights)

    with pytest.raises(CheckpointError, match=re.escape(str(light)) + ".*weights only.*load_optimizer=False"):
        _policy(seed=99, distributed=distributed, dtype=dtype).load(light)

    resumed = _policy(seed=99, distributed=distributed, dtype=dtype)
    resumed.load(light, allow_weights_only=True)  # a fresh optimizer, with the schedule and step count
    _assert_equal(_weights(resumed), weights)
    assert resumed.step_count == 2 and resumed.scheduler.num_steps == policy.scheduler.num_steps
    _train_step(resumed, 5)
    assert _adam_steps(resumed) == {1.0}, "a weights-only checkpoint must not restore Adam's step"


def test_rl_loop_final_checkpoint_is_weights_only(tmp_path, caplog):
    from pivotrl_nemo.algorithms.rl_loop import run_rl_loop

    class _Sync:
        def sync_weights(self) -> None:
            pass

    def run(steps: int) -> MegatronPolicy:
        policy = _policy()
        a = AlgorithmConfig(steps=steps, save_every=1, keep_last=10, save_optimizer=False)

        def step_fn(step: int) -> dict[str, float]:
            return {"train/loss": _train_step(policy, step), "rollout/turns": 1.0}

        run_rl_loop(policy, _Sync(), step_fn, a, tmp_path, None, "", progress=False)
        return policy

    run(3)
    found = list_checkpoints(tmp_path / "checkpoint")
    assert [s for s, _ in found] == [1, 2, 3]
    assert [read_meta(d)["weights_only"] for _, d in found] == [False, False, True]
    assert [read_meta(d)["optimizer_state"] for _, d in found] == [True, True, False]

    # a later run that extends algorithm.steps resumes from the weights-only final checkpoint:
    # a fresh optimizer, said in a warning that names the key
    with caplog.at_level(logging.WARNING, logger="pivotrl_nemo"):
        extended = run(4)
    assert "algorithm.save_optimizer=false" in caplog.text and "NOT an exact" in caplog.text
    assert extended.step_count == 4 and _adam_steps(extended) == {1.0}
    found = list_checkpoints(tmp_path / "checkpoint")
    assert [(s, read_meta(d)["weights_only"]) for s, d in found] == [(1, False), (2, False), (3, True), (4, True)]


def test_rl_loop_keeps_the_optimizer_by_default(tmp_path):
    from pivotrl_nemo.algorithms.rl_loop import run_rl_loop

    policy = _policy()
    a = AlgorithmConfig(steps=2, save_every=1)
    assert a.save_optimizer is True

    class _Sync:
        def sync_weights(self) -> None:
            pass

    run_rl_loop(
        policy, _Sync(), lambda step: {"train/loss": _train_step(policy, step)}, a, tmp_path, None, "", progress=False
    )
    assert [read_meta(d)["weights_only"] for _, d in list_checkpoints(tmp_path / "checkpoint")] == [False, False]


def test_sft_stage_writes_pi0_weights_only(tmp_path):
    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.pipeline import Runner

    cfg = load_config(
        [
            "experiment=tiny",
            "data.max_trajectories=2",
            "data.split_fractions={sft: 1.0, rl: 0.0, val: 0.0, test: 0.0}",
            "sft.steps=1",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    runner = Runner(cfg)
    for name in ("build", "extract", "sft"):
        runner.run(name)
    meta = read_meta(runner.layout.sft_checkpoint)
    assert meta["weights_only"] is True and meta["optimizer_state"] is False and meta["step"] == 1
    assert not any(k.startswith("optimizer") for k in _stored_keys(Path(meta["path"])))
    policy = runner.runtime.pi0(cfg.algorithm.optim, cfg.algorithm.steps)  # how RL reads pi_0
    assert policy.step_count == 0
