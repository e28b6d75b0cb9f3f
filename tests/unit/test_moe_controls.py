"""MoE controls from config reach megatron, and the per-layer expert load is counted exactly."""

import pytest
import torch

from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig


def test_moe_config_reaches_transformer_config():
    from pivotrl_nemo.models.megatron.build import transformer_config

    cfg = ModelConfig(moe_router_dtype="fp64", moe_token_dispatcher_type="allgather", moe_aux_loss_coeff=0.01)
    tc = transformer_config(cfg, ParallelConfig(expert_model_parallel_size=2, expert_tensor_parallel_size=1))
    assert tc.moe_router_dtype == "fp64"
    assert tc.moe_token_dispatcher_type == "allgather"
    assert tc.moe_aux_loss_coeff == 0.01 and tc.moe_router_load_balancing_type == "aux_loss"
    assert tc.expert_model_parallel_size == 2 and tc.expert_tensor_parallel_size == 1
    assert transformer_config(ModelConfig(moe_router_dtype="none")).moe_router_dtype is None


def test_grouped_gemm_on_local_spec_is_refused_clearly():
    from pivotrl_nemo.models.megatron.build import layer_spec

    with pytest.raises(ValueError, match="transformer_impl=transformer_engine"):
        layer_spec(ModelConfig(moe_grouped_gemm=True))
    with pytest.raises(ConfigError, match="model.moe_grouped_gemm"):
        load_config(["model.moe_grouped_gemm=true"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.moe_token_dispatcher_type=ring", "model.moe_token_dispatcher_type"),
        ("model.moe_router_dtype=fp16", "model.moe_router_dtype"),
        ("parallel.expert_model_parallel_size=3", "parallel.expert_model_parallel_size"),
        ("parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel"),
        ("parallel.virtual_pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size"),
        ("parallel.pipeline_model_parallel_size=3", "parallel.pipeline_model_parallel_size"),
        ("parallel.use_distributed_optimizer=true", "parallel.use_distributed_optimizer"),
    ],
)
def test_bad_layouts_name_the_key(override, key):
    if key == "parallel.use_distributed_optimizer" and torch.cuda.is_available():
        pytest.skip("the distributed optimizer is allowed with CUDA")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([override])


def test_world_size_must_fit_the_layout(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="world size 3 is not divisible by TP x PP = 2"):
        load_config(["parallel=tp2"])


def test_expert_load_counts_every_routed_token():
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.batching import make_batch
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    init_distributed(ParallelConfig(), seed=0)
    mcfg = ModelConfig(
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        num_query_groups=2,
        head_dim=8,
        num_experts=4,
        moe_ffn_hidden_size=32,
        moe_router_topk=2,
    )
    policy = MegatronPolicy(mcfg, 64, OptimConfig())
    batch = make_batch([[1, 2, 3], [4, 5, 6, 7, 8]], [[9, 10], [11]], pad_id=0)  # lengths 5 and 6, width 6

    def loss_fn(i, b, hidden, weight):
        return (hidden @ weight.T).logsumexp(-1).mean(), {}

    policy.train()
    policy.zero_grad()
    policy.forward_backward([batch], loss_fn)
    counts = policy.expert_load.counts.clone()
    m = policy.expert_load_metrics()
    # 11 real tokens (the pad of the first sequence is excluded), top-2: 22 assignments per layer
    assert counts.sum(1).tolist() == [22.0, 22.0]
    for layer in (0, 1):
        row = counts[layer]
        assert m[f"moe/layer{layer}_load_max_over_mean"] == pytest.approx(float(row.max()) / 5.5)
    assert m["moe/load_max_over_mean"] >= 1.0
    assert policy.expert_load.counts.sum() == 0  # collect() resets
    policy.eval()
    policy.forward_backward([batch], loss_fn, forward_only=True)
    assert policy.expert_load.counts.sum() == 0  # evaluation / no-grad passes are not counted
