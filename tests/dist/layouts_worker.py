"""Worker for test_layouts.py (``torchrun --nproc_per_node 2``): one GRPO step of the same tiny
model (dense, MoE, hybrid Mamba/attention/MoE) on the same rollout batch under every parallel
layout, against the single-rank step.

The reference is computed in the same launch: at the TP=PP=EP=1 layout every rank trains on the
whole batch with a data-parallel view of size one, which is the single-rank computation (DDP
averages two identical gradients). Each layout then starts from the reference's initial weights
(``sharding.load_full_state``), takes the step on its share of the batch, and its full updated
weights (``sharding.iter_full_state``) are compared with the reference's. Adam with eps=1 and
lr=10 makes the update ~ -10 x gradient, so equal weights mean equal gradients (including their
scale). Rank 0 saves {layout: {loss, ref_loss, max_diff, worst, tensors}}.
"""

import sys

import torch

VOCAB = 128
DENSE = dict(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, head_dim=8, ffn_hidden_size=64,
             num_experts=0)
MOE = dict(DENSE, num_experts=4, moe_ffn_hidden_size=32, moe_router_topk=2)
# Nemotron-H-like: every layer kind, Mamba heads / groups split over TP (in_proj and conv1d by blocks)
HYBRID = dict(MOE, arch="hybrid", hybrid_layer_pattern="M*E-", num_layers=4, qk_layernorm=False,
              position_embedding="none", mlp_activation="squared_relu", mamba_num_heads=4, mamba_head_dim=8,
              mamba_state_dim=8, mamba_num_groups=2, mamba_chunk_size=8, moe_router_score_function="sigmoid",
              moe_router_expert_bias=True, moe_shared_expert_ffn_hidden_size=32)

LAYOUTS = [  # (name, model, ParallelConfig kwargs)
    ("dp2", MOE, dict()),
    ("tp2", DENSE, dict(tensor_model_parallel_size=2)),
    ("tp2_sp_moe", MOE, dict(tensor_model_parallel_size=2, sequence_parallel=True)),
    ("ep2", MOE, dict(expert_model_parallel_size=2)),
    ("pp2", MOE, dict(pipeline_model_parallel_size=2)),
    ("pp2_dense", DENSE, dict(pipeline_model_parallel_size=2)),
    ("hybrid_tp2_sp", HYBRID, dict(tensor_model_parallel_size=2, sequence_parallel=True)),
    ("hybrid_ep2", HYBRID, dict(expert_model_parallel_size=2)),
]
KINDS = {"dense": DENSE, "moe": MOE, "hybrid": HYBRID}


def _policy(model_kwargs: dict, parallel):
    from pivotrl_nemo.config.schema import ModelConfig, OptimConfig
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    init_distributed(parallel, seed=0)
    return MegatronPolicy(ModelConfig(seed=3, **model_kwargs), VOCAB, OptimConfig(lr=10.0, clip_grad=0.0, adam_eps=1.0),
                          parallel=parallel)


def _step(policy, dp):
    from grpo_dp_worker import fixed_groups

    from pivotrl_nemo.algorithms.grpo_step import grpo_step
    from pivotrl_nemo.config.schema import AlgorithmConfig

    return grpo_step(policy, dp.shard(fixed_groups()), AlgorithmConfig(micro_batch_size=3), 0, 1.0, "torch", dp)


def _full(policy) -> dict:
    from pivotrl_nemo.models.megatron import sharding

    return {k: v.detach().clone().cpu() for k, v in sharding.iter_full_state(policy)}


def main(out: str) -> None:
    import torch.distributed as dist

    from pivotrl_nemo.config.schema import ParallelConfig
    from pivotrl_nemo.distributed.dp import DataParallel, current_dp
    from pivotrl_nemo.distributed.setup import destroy
    from pivotrl_nemo.models.megatron import sharding

    refs = {}
    for name, kind in KINDS.items():
        policy = _policy(kind, ParallelConfig())
        init = _full(policy)
        m = _step(policy, DataParallel(0, 1))  # the whole batch: the single-rank step
        refs[name] = (init, m["loss"], _full(policy))
        destroy(keep_default_group=True)
    results = {}
    for name, kind, kwargs in LAYOUTS:
        init, ref_loss, ref_after = refs[next(k for k, v in KINDS.items() if v is kind)]
        policy = _policy(kind, ParallelConfig(**kwargs))
        sharding.load_full_state(policy, lambda k: init[k])
        m = _step(policy, current_dp())
        after = _full(policy)
        diffs = {k: float((after[k] - ref_after[k]).abs().max()) for k in ref_after}
        worst = max(diffs, key=diffs.get)
        moved = max(float((ref_after[k] - init[k]).abs().max()) for k in ref_after)
        results[name] = {"loss": m["loss"], "ref_loss": ref_loss, "max_diff": diffs[worst], "worst": worst,
                         "tensors": sorted(after) == sorted(ref_after), "moved": moved}
        destroy(keep_default_group=True)
    if dist.get_rank() == 0:
        torch.save(results, out)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    main(sys.argv[1])
