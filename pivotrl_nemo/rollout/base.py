"""The RolloutEngine contract: how stages get one-turn completions from a policy.

Lifecycle: an engine is built from a policy's weights, then (a) ``generate`` is called any
number of times; (b) after every optimizer step the trainer calls ``update_weights`` with the
full set of HF-named tensors (through a ``weight_sync.WeightSynchronizer``); (c) engines that
share GPUs with the trainer implement ``sleep`` (free weights and KV cache) and ``wake``.
Profiling only ever calls ``generate`` on a frozen policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one assistant turn."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    max_new_tokens: int = 96
    """Hard cap on the length of one action; longer completions are cut (finish_reason 'length')."""
    seed: int | None = None
    """Seed for this call's sampling; None draws from the engine's generator."""
    stream_keys: tuple[int, ...] | None = None
    """Random-stream key of each prompt of a seeded call (default: its index). Data-parallel
    ranks pass each prompt's position in the global batch, so a sharded batch draws exactly the
    samples one rank would have drawn for the whole batch."""

    def stream_key(self, prompt_index: int) -> int:
        """The random-stream key of prompt ``prompt_index`` of this call."""
        return prompt_index if self.stream_keys is None else int(self.stream_keys[prompt_index])


@dataclass
class Completion:
    """One sampled action. ``logprobs[i]`` is the sampling log-prob of ``token_ids[i]`` under the
    distribution actually sampled from (after temperature / top-p), as used for importance ratios."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS / end-of-turn) or "length"
    prompt_token_ids: list[int] = field(default_factory=list)


class RolloutEngine(Protocol):
    """Generates one-turn completions; see the module docstring for the lifecycle."""

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids), ``n`` completions; result[i][j] is the j-th for prompt i."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new HF-named weights (all of them, in any order) in place."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory while the trainer runs (no-op where not colocated)."""
        ...

    def wake(self) -> None:
        """Undo ``sleep`` before the next ``generate``."""
        ...
