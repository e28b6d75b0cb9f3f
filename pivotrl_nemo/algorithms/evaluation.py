"""Turn-level functional accuracy on held-out candidates, and the paired bootstrap.

A candidate's accuracy is the mean verifier reward over its samples; a policy's accuracy is
the mean over candidates. The 95% interval of the difference between two policies resamples
*candidates* (paired: the same resampled candidates for both), never individual samples, so
several samples of one candidate are not counted as independent evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm


def paired_bootstrap_ci(
    a: list[float], b: list[float], n_boot: int, seed: int, alpha: float = 0.05
) -> tuple[float, float]:
    """95% percentile interval of mean(b) - mean(a) over paired per-candidate scores."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("paired bootstrap needs two equally long, non-empty score lists")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    diffs = (y[idx] - x[idx]).mean(axis=1)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(a: list[float], n_boot: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """95% percentile interval of mean(a), resampling items (candidates or episodes)."""
    x = np.asarray(a, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap needs a non-empty score list")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def sampled_turn_scores(
    sampler: Any,
    rows: Sequence[Any],
    n: int,
    sampling: Any,
    seed: int,
    temperature: float,
    batch_size: int,
    progress: bool = False,
) -> list[float]:
    """Per row, the mean reward of ``n`` actions sampled at ``temperature`` by ``sampler`` (a
    ``TurnSampler``), ``batch_size`` sequences per engine call, batch ``i`` seeded ``seed + i``."""
    per = max(1, batch_size // n)
    scores: list[float] = []
    starts = range(0, len(rows), per)
    for i in tqdm(starts, desc="eval", unit="batch", dynamic_ncols=True) if progress else starts:
        groups = sampler.sample_and_score(rows[i : i + per], n, sampling, seed=seed + i, temperature=temperature)
        scores.extend(sum(g.rewards) / len(g.rewards) for g in groups)
    return scores
