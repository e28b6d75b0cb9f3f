"""Worker for test_grpo_dp.py: one GRPO step on a fixed rollout batch, at whatever world size it
is launched with (python for 1 rank, torchrun for 2); saves the updated weights. Its fixtures
(``tiny_policy``, ``fixed_groups``) are also used by the loss-implementation parity test."""

import sys

import torch

VOCAB = 128


def tiny_policy(seed: int = 3):
    from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    init_distributed(ParallelConfig(), seed=0)
    mcfg = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, head_dim=8,
                       num_experts=4, moe_ffn_hidden_size=32, moe_router_topk=2, seed=seed)
    # adam_eps >> |g| makes the update linear in the gradient (lr * g / eps), so summation-order
    # noise in near-zero expert gradients is not amplified by Adam's normalisation.
    return MegatronPolicy(mcfg, VOCAB, OptimConfig(lr=10.0, clip_grad=0.0, adam_eps=1.0))


def fixed_groups():
    """4 prompts x 4 actions with uneven lengths and mixed rewards."""
    from pivotrl_nemo.algorithms.rollouts import ScoredGroup
    from pivotrl_nemo.rollout.base import Completion
    from pivotrl_nemo.verifiers.base import Verdict

    g = torch.Generator().manual_seed(0)
    groups = []
    for p in range(4):
        prompt = torch.randint(0, VOCAB, (5 + p,), generator=g).tolist()
        comps, verdicts = [], []
        for j in range(4):
            n = 2 + (p + j) % 4
            comps.append(Completion("", torch.randint(0, VOCAB, (n,), generator=g).tolist(),
                                    (-torch.rand(n, generator=g) * 5).tolist(), "stop"))
            verdicts.append(Verdict(float((p + j) % 3 == 0), "x"))
        groups.append(ScoredGroup({}, prompt, comps, verdicts))
    return groups


def step_and_weights(impl: str = "torch", kl_coef: float = 0.0):
    """One GRPO step from a fresh tiny policy; returns (metrics, updated weights)."""
    from pivotrl_nemo.algorithms.grpo_step import grpo_step
    from pivotrl_nemo.config.schema import AlgorithmConfig
    from pivotrl_nemo.distributed.dp import current_dp

    policy = tiny_policy()
    ref = tiny_policy(seed=4) if kl_coef > 0 else None  # a different pi_ref: KL > 0
    dp = current_dp()
    m = grpo_step(policy, dp.shard(fixed_groups()), AlgorithmConfig(micro_batch_size=3, kl_coef=kl_coef), 0, 1.0,
                  impl, dp, ref_policy=ref)
    weights = {k: v.detach().clone() for k, v in policy.gpt.state_dict().items() if isinstance(v, torch.Tensor)}
    return m, weights


def main(out: str) -> None:
    from pivotrl_nemo.distributed.dp import current_dp

    m, weights = step_and_weights()
    if current_dp().rank == 0:
        torch.save({"weights": weights, "metrics": m}, out)


if __name__ == "__main__":
    main(sys.argv[1])
