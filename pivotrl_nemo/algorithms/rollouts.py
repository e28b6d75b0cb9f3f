"""One-turn rollouts from pivot rows: render the prefix, sample actions, score them.

Shared by profiling (frozen pi_0), training (current policy) and evaluation, so all three see
exactly the same prompts and the same verifier.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass

from ..config.schema import DataConfig, SamplingConfig
from ..data.pivot_row import PivotRow, RowLike
from ..rollout.base import Completion, RolloutEngine, SamplingParams
from ..rollout.chat import render_prompt_ids
from ..verifiers.base import Verdict, Verifier


@dataclass
class ScoredGroup:
    """The n sampled actions for one row and their verdicts (``row`` as given to ``sample_and_score``)."""

    row: dict
    prompt_ids: list[int]
    completions: list[Completion]
    verdicts: list[Verdict]

    @property
    def rewards(self) -> list[float]:
        return [v.reward for v in self.verdicts]


PROMPT_CACHE_ROWS = 8192
"""Rendered prompts kept per sampler (least recently used dropped): training revisits its
pivots every epoch, profiling sees each candidate once, so an unbounded cache would grow with the
data (a 2K-token prompt is 8 KB here, as int32)."""


class TurnSampler:
    """Renders rows (cached by row id, ``PROMPT_CACHE_ROWS`` at most) and samples + scores
    one-turn actions."""

    def __init__(self, engine: RolloutEngine, tokenizer, data_cfg: DataConfig, verifier: Verifier) -> None:
        self.engine, self.tokenizer, self.data_cfg, self.verifier = engine, tokenizer, data_cfg, verifier
        self._prompt_cache: OrderedDict[str, array] = OrderedDict()

    def prompt_ids(self, row: RowLike) -> list[int]:
        view = PivotRow.of(row)
        key = view.id
        ids = self._prompt_cache.get(key)
        if ids is None:
            ids = self._prompt_cache[key] = array("i", render_prompt_ids(view, self.tokenizer, self.data_cfg))
            if len(self._prompt_cache) > PROMPT_CACHE_ROWS:
                self._prompt_cache.popitem(last=False)
        else:
            self._prompt_cache.move_to_end(key)
        return list(ids)

    def sample_and_score(
        self,
        rows: list[dict],
        n: int,
        sampling: SamplingConfig,
        seed: int,
        temperature: float | None = None,
        stream_keys: list[int] | None = None,
    ) -> list[ScoredGroup]:
        """``n`` scored samples per row; ``stream_keys`` (default: row positions) key each row's
        random stream (see ``rollout.base.SamplingParams.stream_keys``)."""
        params = SamplingParams(
            temperature=sampling.temperature if temperature is None else temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            seed=seed,
            stream_keys=None if stream_keys is None else tuple(stream_keys),
        )
        prompts = [self.prompt_ids(r) for r in rows]
        outs = self.engine.generate(prompts, n, params)
        groups = []
        for row, p, comps in zip(rows, prompts, outs):
            verdicts = [self.verifier.verify(row, c.text) for c in comps]
            groups.append(ScoredGroup(row, p, comps, verdicts))
        return groups
