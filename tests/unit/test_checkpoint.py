"""Dist checkpoints of the real megatron policy (tiny MoE, CPU/gloo, world of one): bit-exact round
trip (megatron's non-distributed optimizer and its DistributedOptimizer), Adam's step, tmp +
rename, retention, weights-only loads and readable errors."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
import torch
import torch.nn.functional as F
from by_path import load_module

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.models.megatron.checkpoint import (
    CheckpointError,
    Retention,
    find_latest,
    list_checkpoints,
    load_model_weights,
    read_meta,
)
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


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


_cuda_type_names = load_module("tests/dist/cpu_types.py", "cpu_types").cuda_type_names


def _policy(seed: int = TINY.seed, model: ModelConfig = TINY, distributed: bool = False) -> MegatronPolicy:
    model = dataclasses.replace(model, seed=seed)
    if not distributed and model.params_dtype == "float32":
        return MegatronPolicy(model, VOCAB, OPTIM, total_steps=10)
    parallel = ParallelConfig(use_distributed_optimizer=distributed)
    with _cuda_type_names():
        return MegatronPolicy(model, VOCAB, OPTIM, total_steps=10, parallel=parallel)


def _batch(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(seed))


def _train_step(policy: MegatronPolicy, ids: torch.Tensor) -> float:
    policy.zero_grad()
    logits = policy.forward_logits(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    policy.optimizer_step()
    return float(loss.detach())


def _trained(steps: int, distributed: bool = False) -> MegatronPolicy:
    policy = _policy(distributed=distributed)
    for i in range(steps):
        _train_step(policy, _batch(i))
    return policy


def _weights(policy: MegatronPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.gpt.state_dict().items() if isinstance(v, torch.Tensor)}


def _optimizer_tensors(policy: MegatronPolicy) -> dict[tuple, torch.Tensor]:
    state = policy.optimizer.state_dict()["state"]
    return {(i, k): v.clone() for i, s in state.items() if isinstance(s, dict) for k, v in s.items()}


def _torch_adam_states(policy: MegatronPolicy) -> list[dict]:
    """Each parameter's torch Adam state under any megatron optimizer (the DistributedOptimizer's
    ``state_dict`` leaves the per-parameter state out), in parameter order."""
    subs = getattr(policy.optimizer, "chained_optimizers", None) or [policy.optimizer]
    return [sub.optimizer.state[p] for sub in subs for g in sub.optimizer.param_groups for p in g["params"]]


def _adam_steps(policy: MegatronPolicy) -> set[float]:
    return {float(s["step"]) for s in _torch_adam_states(policy)}


def _adam_tensors(policy: MegatronPolicy) -> dict[tuple, torch.Tensor]:
    return {(i, k): v.clone() for i, s in enumerate(_torch_adam_states(policy)) for k, v in s.items()}


def _rng() -> tuple:
    from megatron.core import tensor_parallel

    tracker = {k: v.clone() for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()}
    return torch.get_rng_state(), random.getstate(), tracker


def _assert_equal_tensors(a: dict, b: dict) -> None:
    assert sorted(a, key=str) == sorted(b, key=str)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trip_is_bit_exact(tmp_path):
    policy = _trained(2)
    rng = _rng()
    extra = {"loop_step": 7, "cursor": [1, 2]}
    d = policy.save(tmp_path, extra=extra, metrics={"train/loss": 1.5}, config_yaml="algorithm:\n  steps: 4\n")
    assert d == tmp_path / "step_00000002" and (tmp_path / "latest").read_text() == "step_00000002\n"
    assert not list(tmp_path.glob("*.tmp")) and (d / ".metadata").is_file()
    assert (d / "config.yaml").read_text() == "algorithm:\n  steps: 4\n"
    meta = read_meta(tmp_path)
    assert meta["step"] == 2 and meta["metrics"] == {"train/loss": 1.5} and meta["extra"] == extra
    assert meta["layout"]["world_size"] == 1 and meta["vocab_size"] == VOCAB
    weights, optim, sched, lr = (
        _weights(policy),
        _optimizer_tensors(policy),
        policy.scheduler.state_dict(),
        policy.current_lr(),
    )
    assert any(k[1] == "exp_avg" for k in optim) and sched["num_steps"] == 2
    loss_a = _train_step(policy, _batch(5))
    after_a = _weights(policy)

    other = _policy(seed=99)
    torch.manual_seed(123)
    random.seed(5)  # the load must bring back the saved generators, not keep these
    assert other.load(tmp_path) == extra
    assert other.step_count == 2
    _assert_equal_tensors(_weights(other), weights)
    _assert_equal_tensors(_optimizer_tensors(other), optim)
    assert other.scheduler.state_dict() == sched and other.current_lr() == lr
    got = _rng()
    assert torch.equal(got[0], rng[0]) and got[1] == rng[1]
    _assert_equal_tensors(got[2], rng[2])
    assert _train_step(other, _batch(5)) == loss_a
    _assert_equal_tensors(_weights(other), after_a)


def test_partial_tmp_is_ignored_and_cleaned_at_the_next_save(tmp_path):
    policy = _trained(1)
    policy.save(tmp_path)
    torn = tmp_path / "step_00000003.tmp"  # what a kill during a save leaves
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"torn")
    (torn / "meta.json").write_text("{}")
    (tmp_path / "latest.tmp.12345").write_text("step_0000")  # a torn pointer write
    assert find_latest(tmp_path) == tmp_path / "step_00000001"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert _policy(seed=99).load(tmp_path) == {} and torn.exists()
    _train_step(policy, _batch(1))
    policy.save(tmp_path)
    assert not torn.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001", "step_00000002"]


def test_latest_naming_a_missing_directory_falls_back_to_the_newest_complete(tmp_path):
    policy = _trained(1)
    policy.save(tmp_path, step=4)
    policy.save(tmp_path, step=6)
    (tmp_path / "latest").write_text("step_00000009\n")  # e.g. a copy that missed a directory
    assert find_latest(tmp_path) == tmp_path / "step_00000006"
    assert read_meta(tmp_path)["step"] == 6


@pytest.mark.parametrize("mode, best, kept", [("max", 2, [2, 4, 5]), ("min", 3, [3, 4, 5]), ("", None, [4, 5])])
def test_retention_keeps_the_last_k_and_the_best(tmp_path, mode, best, kept):
    policy = _trained(1)
    retention = Retention(keep_last=2, best_metric="train/reward_mean" if mode else "", best_mode=mode or "max")
    values = {1: 0.2, 2: 0.9, 3: 0.1, 4: 0.5, 5: 0.4}
    for step, v in values.items():
        policy.save(tmp_path, step, metrics={"train/reward_mean": v}, retention=retention)
        assert len(list_checkpoints(tmp_path)) <= 3
        assert (tmp_path / "latest").read_text().strip() == f"step_{step:08d}"
    assert [s for s, _ in list_checkpoints(tmp_path)] == kept
    assert not list(tmp_path.glob("*.tmp"))
    if best is None:
        assert not (tmp_path / "best").exists()
        return
    assert json.loads((tmp_path / "best").read_text()) == {
        "step_dir": f"step_{best:08d}",
        "metric": "train/reward_mean",
        "mode": mode,
        "value": values[best],
    }
    # saving the same step again replaces it; a new best retires the old one
    policy.save(tmp_path, 5, metrics={"train/reward_mean": 2.0 if mode == "max" else -1.0}, retention=retention)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert json.loads((tmp_path / "best").read_text())["step_dir"] == "step_00000005"


def test_weights_only_load(tmp_path):
    policy = _trained(2)
    policy.save(tmp_path)
    ids = _batch(9)
    with torch.no_grad():
        logits = policy.forward_logits(ids)
    fresh = _policy(seed=99)
    lr0 = fresh.current_lr()
    assert fresh.load(tmp_path / "step_00000002", load_optimizer=False) == {}
    assert fresh.step_count == 0 and fresh.current_lr() == lr0
    assert fresh.optimizer.state_dict()["state"] == {}, "a weights-only load must not bring optimizer state"
    _assert_equal_tensors(_weights(fresh), _weights(policy))
    with torch.no_grad():
        assert torch.equal(fresh.forward_logits(ids), logits)
    bare = _policy(seed=98).gpt  # export path: a bare GPTModel
    meta = load_model_weights(bare, tmp_path, TINY, VOCAB)
    assert meta["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(bare.parameters(), policy.gpt.parameters()))


def test_errors_name_the_checkpoint(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        _policy().load(missing)
    policy = _trained(1)
    d = policy.save(tmp_path / "ckpt")

    smaller = _policy(model=dataclasses.replace(TINY, hidden_size=32, num_experts=2))
    with pytest.raises(CheckpointError, match=r"hidden_size: checkpoint 64 vs model 32; num_experts"):
        smaller.load(d)

    old = tmp_path / "old"
    old.mkdir()
    (old / "policy.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="policy.pt"):
        _policy().load(old)

    shard = next(d.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn shard
    with pytest.raises(CheckpointError, match=re.escape(f"cannot load checkpoint {d}")):
        _policy().load(d)
    (d / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(d))):
        _policy().load(d, load_optimizer=False)
    (d / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape(str(d / "meta.json"))):
        read_meta(d)


def test_checkpoint_before_any_optimizer_step(tmp_path):
    """The RL loop skips the optimizer step when no group has reward variance, so a checkpoint can
    hold no optimizer state at all; loading it resets the optimizer to that state."""
    fresh = _policy()
    fresh.save(tmp_path)
    assert read_meta(tmp_path)["optimizer_state"] is False
    stepped = _trained(2)  # other weights and a populated optimizer
    stepped.load(tmp_path)
    assert stepped.step_count == 0 and stepped.optimizer.state_dict()["state"] == {}
    _assert_equal_tensors(_weights(stepped), _weights(fresh))
    assert _train_step(stepped, _batch(3)) == _train_step(fresh, _batch(3))
    _assert_equal_tensors(_weights(stepped), _weights(fresh))


def test_checkpoint_without_optimizer_state_into_bf16(tmp_path):
    """A checkpoint saved before the first step has no optimizer state, so nothing brings the bf16
    optimizer's fp32 main params to the loaded weights but the load itself: else its first step
    starts from the policy's own initial weights and overwrites the loaded ones."""
    fresh = _policy()
    fresh.save(tmp_path)
    bf16 = _policy(seed=99, model=dataclasses.replace(TINY, params_dtype="bfloat16"))
    bf16.load(tmp_path)
    _train_step(bf16, _batch(3))
    _train_step(fresh, _batch(3))
    got, ref = _weights(bf16), _weights(fresh)
    worst = max(float((got[k].float() - ref[k]).abs().max()) for k in ref)
    assert worst < 2e-2, f"the bf16 step did not continue from the loaded weights (max diff {worst:.3g})"


@pytest.mark.parametrize("distributed", [False, True], ids=["optimizer", "distributed_optimizer"])
def test_adam_step_survives_a_round_trip(tmp_path, distributed):
    """Adam's bias correction continues after a resume. megatron's DistributedOptimizer hands the
    step over in ``param_groups[*]['step']`` (as TE/Apex FusedAdam keep it), not in a sharded
    entry; the non-distributed optimizer over torch Adam as 'common_step'."""
    policy = _trained(2, distributed)
    policy.save(tmp_path)
    assert read_meta(tmp_path)["optimizer_state"] is True and _adam_steps(policy) == {2.0}
    weights, optim = _weights(policy), _adam_tensors(policy)
    assert any(k[1] == "exp_avg" for k in optim)
    loss = _train_step(policy, _batch(5))
    after = _weights(policy)

    other = _policy(seed=99, distributed=distributed)  # a fresh optimizer: no state yet
    other.load(tmp_path)
    assert _adam_steps(other) == {2.0}, "the step restarted: bias correction as at the first step"
    _assert_equal_tensors(_weights(other), weights)
    _assert_equal_tensors(_adam_tensors(other), optim)
    assert _train_step(other, _batch(5)) == loss
    _assert_equal_tensors(_weights(other), after)
    assert _adam_steps(other) == {3.0}


def test_distributed_optimizer_checkpoint_before_any_step(tmp_path):
    """megatron's DistributedOptimizer over torch AdamW cannot describe itself without state
    (``state_dict`` asserts one step among its parameters'): saving before the first step and
    loading into a fresh one both work, and continue exactly as the fresh optimizer does."""
    fresh = _policy(distributed=True)
    fresh.save(tmp_path)
    other = _policy(seed=99, distributed=True)
    other.load(tmp_path)
    assert other.step_count == 0 and _adam_steps(other) == {0.0}
    _assert_equal_tensors(_weights(other), _weights(fresh))
    assert _train_step(other, _batch(3)) == _train_step(fresh, _batch(3))
    _assert_equal_tensors(_weights(other), _weights(fresh))
    assert _adam_steps(other) == _adam_steps(fresh) == {1.0}


@pytest.mark.parametrize(
    "override, key",
    [
        ("algorithm.keep_last=0", "algorithm.keep_last"),
        ("algorithm.best_mode=mean", "algorithm.best_mode"),
        ("algorithm.best_metric=reward_mean", "algorithm.best_metric"),
    ],
)
def test_retention_config_is_validated(override, key):
    from pivotrl_nemo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}'")):
        load_config([override])
    a = load_config(
        ["algorithm.keep_last=3", "algorithm.best_metric=train/reward_mean", "algorithm.best_mode=min"]
    ).algorithm
    assert Retention.from_config(a) == Retention(3, "train/reward_mean", "min")
