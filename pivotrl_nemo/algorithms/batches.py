"""Which examples each step trains on: shuffled epochs, shared by SFT, PivotRL and e2e RL."""

from __future__ import annotations

import random


def epoch_batches(n: int, per_step: int, steps: int, seed: int) -> list[list[int]]:
    """Indices into ``n`` examples for every step: shuffled epochs, each example once per epoch
    (a step larger than ``n`` spans several epochs). A pure function of the seed, so a resumed run
    sees the batches it would have seen."""
    rng = random.Random(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < per_step:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order.extend(epoch)
        batches.append(order[:per_step])
        del order[:per_step]
    return batches
