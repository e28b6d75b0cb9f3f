"""megatron GPTModel -> HF twin: same logits, before and after optimizer steps; strict loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.models.megatron.hf.family import split_qkv
from pivotrl_nemo.models.megatron.hf.mapping import (
    WeightLoadError,
    build_hf_model,
    hf_config_for,
    hf_from_megatron_stream,
    load_named_tensors_into,
    megatron_to_hf,
)
from pivotrl_nemo.models.megatron.policy import MegatronPolicy
from pivotrl_nemo.models.megatron.sharding import iter_full_state
from pivotrl_nemo.weight_sync.base import InProcessWeightSynchronizer

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
    init_method_std=0.06,
)


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


class _InProcessEngine:
    """The engine side of the contract: ``update_weights`` loads HF-named tensors in place."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.updates = 0

    def update_weights(self, named_tensors) -> None:
        load_named_tensors_into(self.model, named_tensors)
        self.updates += 1


def _perturb_norms(policy: MegatronPolicy) -> None:
    """Norm weights start at one; make them differ so a mix-up between norms shows."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in policy.gpt.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def _ids(b: int = 3, s: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


def _assert_same_logits(policy: MegatronPolicy, hf: torch.nn.Module, ids: torch.Tensor) -> None:
    policy.eval()
    with torch.no_grad():
        ours = policy.forward_logits(ids).cpu()
        theirs = hf(input_ids=ids.to(hf.device)).logits.float().cpu()
    policy.train()
    assert ours.shape == theirs.shape == (*ids.shape, VOCAB)
    assert ours.abs().max() > 0.3, "weights too small for a meaningful comparison"
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [TINY, dataclasses.replace(TINY, num_experts=0, ffn_hidden_size=96, tie_word_embeddings=True)],
    ids=["moe", "dense-tied"],
)
def test_hf_twin_matches_before_and_after_optimizer_steps(cfg):
    policy = MegatronPolicy(cfg, VOCAB, OptimConfig(lr=1e-2))
    _perturb_norms(policy)
    hf = build_hf_model(cfg, VOCAB)
    engine = _InProcessEngine(hf)
    sync = InProcessWeightSynchronizer(policy.model, cfg, engine)
    sync.sync_weights()
    ids = _ids()
    _assert_same_logits(policy, hf, ids)

    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    for _ in range(2):
        policy.zero_grad()
        logits = policy.forward_logits(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1).to(logits.device)).backward()
        policy.optimizer_step()
    sync.sync_weights()
    assert engine.updates == sync.num_syncs == 2
    changed = [n for n, p in hf.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before), "every tensor moves after Adam steps"
    _assert_same_logits(policy, hf, _ids(seed=1))


def test_hf_config_fields():
    c = hf_config_for(TINY, VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    assert type(c).__name__ == "Qwen3MoeConfig"
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (4, 2, 32)
    assert c.norm_topk_prob is True and c.decoder_sparse_step == 1 and c.mlp_only_layers == []
    assert c.head_dim == 16 and c.num_key_value_heads == 2 and c.attention_bias is False
    assert c.rope_parameters["rope_theta"] == TINY.rotary_base and c.rms_norm_eps == TINY.norm_epsilon
    assert c.tie_word_embeddings is False and (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, 3)
    dense = hf_config_for(dataclasses.replace(TINY, num_experts=0), VOCAB)
    assert type(dense).__name__ == "Qwen3Config" and dense.intermediate_size == TINY.ffn_hidden_size


def test_megatron_to_hf_covers_every_hf_parameter_once():
    policy = MegatronPolicy(TINY, VOCAB, OptimConfig())
    names = [n for n, _ in megatron_to_hf(policy.model, TINY)]
    hf = build_hf_model(TINY, VOCAB)
    assert sorted(names) == sorted(n for n, _ in hf.named_parameters())
    assert len(names) == len(set(names))


def test_split_qkv_unpacks_query_groups():
    cfg = dataclasses.replace(TINY, num_attention_heads=4, num_query_groups=2, head_dim=1)
    # megatron rows per group: [q, q, k, v]; label each row with its (kind, head) to check placement
    rows = torch.tensor([10, 11, 20, 30, 12, 13, 21, 31], dtype=torch.float32)[:, None]
    q, k, v = split_qkv(rows, cfg)
    assert q.flatten().tolist() == [10, 11, 12, 13]
    assert k.flatten().tolist() == [20, 21]
    assert v.flatten().tolist() == [30, 31]


def test_load_named_tensors_into_is_strict():
    hf = build_hf_model(dataclasses.replace(TINY, num_layers=1), VOCAB)
    good = [(n, torch.zeros_like(p)) for n, p in hf.named_parameters()]
    assert load_named_tensors_into(hf, good) == len(good)
    assert all(float(p.abs().sum()) == 0.0 for p in hf.parameters())

    with pytest.raises(WeightLoadError, match=r"missing \(1\): lm_head.weight"):
        load_named_tensors_into(hf, good[:-1])
    with pytest.raises(WeightLoadError, match=r"unexpected \(1\): model.bogus"):
        load_named_tensors_into(hf, good + [("model.bogus", torch.zeros(1))])
    with pytest.raises(WeightLoadError, match=r"duplicated \(1\): model.norm.weight"):
        load_named_tensors_into(hf, good + [("model.norm.weight", torch.zeros(TINY.hidden_size))])
    name, t = good[0]
    with pytest.raises(WeightLoadError, match="mis-shaped"):
        load_named_tensors_into(hf, [(name, t[:-1])] + good[1:])


def test_stream_conversion_accepts_any_expert_order_and_te_names():
    """Experts arrive in EP-rank order (0, 2, 1, 3 at EP=2) and a Transformer Engine model names
    its fused norms differently; the HF tensors are the same."""
    import re

    policy = MegatronPolicy(dataclasses.replace(TINY, num_layers=1), VOCAB, OptimConfig())
    _perturb_norms(policy)
    cfg = policy.model_cfg
    stream = [(n, t.clone()) for n, t in iter_full_state(policy)]
    reference = dict(hf_from_megatron_stream(stream, cfg))

    def rank_order(item):
        m = re.search(r"local_experts\.(\d+)\.", item[0])
        return (0, 0) if m is None else (int(m.group(1)) % 2, int(m.group(1)))

    shuffled = sorted(stream, key=rank_order)  # stable: non-expert tensors keep their order
    assert [n for n, _ in shuffled] != [n for n, _ in stream]
    te = [
        (
            n.replace(
                "decoder.layers.0.input_layernorm.weight",
                "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
            ),
            t,
        )
        for n, t in shuffled
    ]
    converted = dict(hf_from_megatron_stream(te, cfg))
    assert converted.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(converted[k], v), k

    with pytest.raises(ValueError, match="incomplete experts"):
        list(hf_from_megatron_stream([x for x in stream if "local_experts.3.linear_fc2" not in x[0]], cfg))
    with pytest.raises(ValueError, match="no Hugging Face counterpart"):
        list(hf_from_megatron_stream([("decoder.layers.0.bogus.weight", torch.zeros(1))], cfg))


def test_dense_te_pre_mlp_norm_name_maps_to_post_attention_layernorm():
    cfg = dataclasses.replace(TINY, num_experts=0, ffn_hidden_size=96)
    w = torch.randn(cfg.hidden_size)
    ((name, t),) = hf_from_megatron_stream([("decoder.layers.3.mlp.linear_fc1.layer_norm_weight", w)], cfg)
    assert name == "model.layers.3.post_attention_layernorm.weight" and t is w
