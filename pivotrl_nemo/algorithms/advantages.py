"""Group advantages for GRPO on pivots. Rewards come as a [num_prompts, group_size] tensor.

Both estimators give exactly zero advantage to a group whose rewards are all equal
(PivotRL Prop. 3.1: such a state carries no policy gradient), which is why the pivot filter
keeps only states with reward variance > 0.
"""

from __future__ import annotations

import torch


def group_std(rewards: torch.Tensor) -> torch.Tensor:
    """Per-group standard deviation (population form, i.e. divided by G), shape [P, 1]."""
    return rewards.std(dim=1, keepdim=True, unbiased=False)


def group_mean_std_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_j r_j) / (std_j r_j + eps): the GRPO paper's form."""
    rewards = rewards.float()
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (group_std(rewards) + eps)


def leave_one_out_advantages(rewards: torch.Tensor, eps: float = 1e-6, normalize_by_std: bool = True) -> torch.Tensor:
    """A_i = r_i - mean_{j != i} r_j, divided by the group std where it is > 0 (NVIDIA's runs).

    Groups of one sample get zero advantage (there is no baseline).
    """
    rewards = rewards.float()
    g = rewards.shape[1]
    if g <= 1:
        return torch.zeros_like(rewards)
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    adv = rewards - baseline
    if normalize_by_std:
        std = group_std(rewards)
        adv = torch.where(std > 0, adv / (std + eps), adv)
    return adv


ESTIMATORS = {
    "grpo": group_mean_std_advantages,
    "leave_one_out": leave_one_out_advantages,
}


def compute_advantages(rewards: torch.Tensor, estimator: str, eps: float = 1e-6) -> torch.Tensor:
    """Dispatch by config name (``algorithm.advantage``); unknown names raise."""
    try:
        fn = ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}") from None
    return fn(rewards, eps=eps)


def zero_variance_fraction(rewards: torch.Tensor) -> float:
    """Fraction of groups whose rewards are all equal (they contribute no gradient)."""
    return float((group_std(rewards.float()).squeeze(1) == 0).float().mean())
