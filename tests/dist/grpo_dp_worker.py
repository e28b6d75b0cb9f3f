"""Worker for test_grpo_dp.py: one GRPO step on a fixed rollout batch, at whatever world size it
is launched with (python for 1 rank, torchrun for 2); saves the updated weights."""

import sys

import torch


def main(out: str) -> None:
    from pivotrl_nemo.algorithms.rollouts import ScoredGroup
    from pivotrl_nemo.algorithms.grpo_step import grpo_step
    from pivotrl_nemo.config.schema import AlgorithmConfig, ModelConfig, OptimConfig, ParallelConfig
    from pivotrl_nemo.distributed.dp import current_dp
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy
    from pivotrl_nemo.rollout.base import Completion
    from pivotrl_nemo.verifiers.base import Verdict

    init_distributed(ParallelConfig(), seed=0)
    mcfg = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, head_dim=8,
                       num_experts=4, moe_ffn_hidden_size=32, moe_router_topk=2, seed=3)
    # adam_eps >> |g| makes the update linear in the gradient (lr * g / eps), so summation-order
    # noise in near-zero expert gradients is not amplified by Adam's normalisation.
    policy = MegatronPolicy(mcfg, 128, OptimConfig(lr=10.0, clip_grad=0.0, adam_eps=1.0))
    g = torch.Generator().manual_seed(0)
    groups = []
    for p in range(4):  # 4 prompts x 4 actions, uneven lengths, mixed rewards
        prompt = torch.randint(0, 128, (5 + p,), generator=g).tolist()
        comps, verdicts = [], []
        for j in range(4):
            n = 2 + (p + j) % 4
            comps.append(Completion("", torch.randint(0, 128, (n,), generator=g).tolist(),
                                    (-torch.rand(n, generator=g) * 5).tolist(), "stop"))
            verdicts.append(Verdict(float((p + j) % 3 == 0), "x"))
        groups.append(ScoredGroup({}, prompt, comps, verdicts))
    dp = current_dp()
    acfg = AlgorithmConfig(micro_batch_size=3)
    m = grpo_step(policy, dp.shard(groups), acfg, 0, 1.0, "torch", dp)
    if dp.rank == 0:
        torch.save({"weights": {k: v.detach().clone() for k, v in policy.gpt.state_dict().items()
                                if isinstance(v, torch.Tensor)}, "metrics": m}, out)


if __name__ == "__main__":
    main(sys.argv[1])
