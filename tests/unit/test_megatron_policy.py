"""MegatronPolicy on the real megatron-core GPTModel (tiny MoE, CPU/gloo, world of one)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.models.megatron.build import build_model
from pivotrl_nemo.models.megatron.policy import MegatronPolicy

VOCAB = 300
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


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


def _batch(b: int = 4, s: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


def _ce(policy: MegatronPolicy, ids: torch.Tensor) -> torch.Tensor:
    logits = policy.forward_logits(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1).to(logits.device))


def _train_step(policy: MegatronPolicy, ids: torch.Tensor) -> tuple[float, float]:
    policy.zero_grad()
    loss = _ce(policy, ids)
    loss.backward()
    return loss.detach().item(), policy.optimizer_step()


def test_gptmodel_returns_batch_first_logits():
    model = build_model(TINY, VOCAB)
    device = next(model.parameters()).device
    ids = _batch(3, 7).to(device)
    pos = torch.arange(7, device=device).unsqueeze(0).expand(3, 7)
    out = model(ids, pos, None)
    assert out.shape == (3, 7, VOCAB) and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in model.parameters())
    assert (
        model.output_layer.weight is not None
        and model.embedding.word_embeddings.weight is not model.output_layer.weight
    )


def test_build_is_deterministic_given_the_seed():
    a, b = build_model(TINY, VOCAB), build_model(TINY, VOCAB)
    c = build_model(dataclasses.replace(TINY, seed=TINY.seed + 1), VOCAB)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.decoder.layers[0].mlp.router.weight, c.decoder.layers[0].mlp.router.weight)


def test_forward_logits_and_hidden_agree_and_padding_is_invisible():
    policy = MegatronPolicy(TINY, VOCAB, OptimConfig())
    policy.eval()
    ids = _batch()
    with torch.no_grad():
        logits = policy.forward_logits(ids)
        hidden, weight = policy.hidden_and_output_weight(ids)
        assert hidden.shape == (4, 12, TINY.hidden_size) and weight.shape == (VOCAB, TINY.hidden_size)
        torch.testing.assert_close(hidden @ weight.T, logits, atol=1e-5, rtol=1e-5)
        # right padding: different pad tokens after position 8 leave positions 0..8 unchanged
        padded = ids.clone()
        padded[:, 9:] = 0
        pad_mask = torch.zeros_like(ids, dtype=torch.bool)
        pad_mask[:, 9:] = True
        other = policy.forward_logits(padded, padding_mask=pad_mask)
        torch.testing.assert_close(other[:, :9], logits[:, :9], atol=1e-5, rtol=1e-5)


def test_training_reduces_cross_entropy_with_warmup():
    policy = MegatronPolicy(TINY, VOCAB, OptimConfig(lr=3e-3, warmup_steps=2, clip_grad=1.0), total_steps=6)
    policy.train()
    ids = _batch()
    losses, lrs = [], []
    for _ in range(6):
        loss, grad_norm = _train_step(policy, ids)
        assert grad_norm > 0
        losses.append(loss)
        lrs.append(policy.current_lr())
    assert lrs[:3] == pytest.approx([1.5e-3, 3e-3, 3e-3])
    assert losses[-1] < losses[0] - 0.5, losses
    assert policy.step_count == 6


def test_grad_clip_reports_preclip_norm_and_clips():
    policy = MegatronPolicy(TINY, VOCAB, OptimConfig(lr=1e-3, clip_grad=0.1))
    policy.zero_grad()
    _ce(policy, _batch()).backward()
    params = [p for p in policy.gpt.parameters() if p.requires_grad]
    pre = torch.sqrt(sum((p.main_grad.float() ** 2).sum() for p in params)).item()
    grad_norm = policy.optimizer_step()
    post = torch.sqrt(sum((p.main_grad.float() ** 2).sum() for p in params)).item()
    assert grad_norm == pytest.approx(pre, rel=1e-5)
    assert pre > 0.1 and post == pytest.approx(0.1, rel=1e-3)


def test_save_load_round_trip(tmp_path):
    optim = OptimConfig(lr=3e-3, warmup_steps=3)
    policy = MegatronPolicy(TINY, VOCAB, optim)
    ids, nxt = _batch(seed=0), _batch(seed=1)
    for _ in range(2):
        _train_step(policy, ids)
    # a dist checkpoint root (layout, retention and errors: test_checkpoint.py)
    step_dir = policy.save(tmp_path / "ckpt")
    assert step_dir == tmp_path / "ckpt" / "step_00000002" and (step_dir / "meta.json").is_file()
    policy.save(tmp_path / "ckpt")  # the same step again replaces it
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step_00000002"]
    with torch.no_grad():
        logits = policy.forward_logits(nxt)
    loss_a, _ = _train_step(policy, nxt)
    after_a = float(_ce(policy, nxt))

    other = MegatronPolicy(dataclasses.replace(TINY, seed=99), VOCAB, optim)
    other.load(tmp_path / "ckpt")
    assert other.step_count == 2
    with torch.no_grad():
        assert torch.equal(other.forward_logits(nxt), logits)
    loss_b, _ = _train_step(other, nxt)
    assert loss_b == loss_a
    assert other.current_lr() == policy.current_lr()
    assert float(_ce(other, nxt)) == after_a

    weights_only = MegatronPolicy(TINY, VOCAB, optim)
    weights_only.load(tmp_path / "ckpt", load_optimizer=False)
    assert weights_only.step_count == 0
    with torch.no_grad():
        assert torch.equal(weights_only.forward_logits(nxt), logits)


@pytest.mark.parametrize("at_construction", [True, False])
def test_router_freeze_keeps_router_weights(at_construction):
    if at_construction:
        policy = MegatronPolicy(dataclasses.replace(TINY, moe_router_freeze=True), VOCAB, OptimConfig(lr=1e-2))
    else:
        policy = MegatronPolicy(TINY, VOCAB, OptimConfig(lr=1e-2))
        policy.freeze_router()
    before = policy.router_weights()
    assert len(before) == TINY.num_layers
    others = {n: p.detach().clone() for n, p in policy.gpt.named_parameters() if ".router." not in n}
    ids = _batch()
    for _ in range(2):
        _train_step(policy, ids)
    after = policy.router_weights()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [n for n, p in policy.gpt.named_parameters() if n in others and not torch.equal(p, others[n])]
    assert len(changed) > len(others) // 2
    opt_params = {id(p) for g in policy.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for n, p in policy.gpt.named_parameters() if ".router." in n)


def test_freeze_router_after_a_step_is_refused():
    policy = MegatronPolicy(TINY, VOCAB, OptimConfig())
    _train_step(policy, _batch())
    with pytest.raises(RuntimeError, match="freeze_router=True"):
        policy.freeze_router()


def test_sdpa_core_attention_equals_megatron_local_attention():
    """The SDPA core attention computes exactly megatron's local DotProductAttention (GQA, causal)."""
    import dataclasses

    import torch

    from pivotrl_nemo.config.schema import ModelConfig, ParallelConfig
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.build import build_model

    init_distributed(ParallelConfig(), seed=0)
    base = ModelConfig(
        hidden_size=64,
        num_layers=2,
        num_attention_heads=4,
        num_query_groups=2,
        head_dim=16,
        num_experts=4,
        moe_ffn_hidden_size=32,
        moe_router_topk=2,
        seed=7,
    )
    sdpa = build_model(dataclasses.replace(base, attention_backend="sdpa"), 256)
    local = build_model(dataclasses.replace(base, attention_backend="local"), 256)
    local.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 256, (3, 37))
    pos = torch.arange(37).expand(3, 37)
    a = sdpa(ids, pos, None)
    b = local(ids, pos, None)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
