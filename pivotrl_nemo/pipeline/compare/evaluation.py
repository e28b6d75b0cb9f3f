"""Held-out evaluation of one policy, identical for every arm and for pi_0.

Three numbers, each a list of per-item scores so that arms can be compared paired:

- ``turn``: turn-level functional accuracy on the test split's candidates (the ``eval`` stage's
  measure: mean verifier reward over ``eval.samples_per_candidate`` samples per candidate);
- ``episode`` / ``episode_turns``: held-out test episodes played whole in the domain's
  environment (``algorithms.episodes``): success (every user turn's state check passed) and the
  fraction of user turns passed, averaged over ``compare.episode_samples`` plays;
- ``ood``: turn-level accuracy on the out-of-domain family's held-out tool-call candidates
  (``data.ood_source``), judged by that domain's own verifier: a skill pi_0 learned in SFT that
  no arm trains on. Text-reply turns are left out: ``tool_call_args`` passes any reply to an
  expected reply, so they would measure only whether a policy still answers in text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pivotrl_nemo.config import PivotRLConfig
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.data.row_store import load_pivot_rows
from pivotrl_nemo.pipeline.compare.arms import environment_factory, split_trajectories
from pivotrl_nemo.pipeline.stage import StageContext
from pivotrl_nemo.registry import DOMAINS
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)


def sampled_scores(sampler: Any, rows: Sequence[dict[str, Any]], cfg: PivotRLConfig, n: int, seed: int) -> list[float]:
    """Mean reward of ``n`` sampled actions per row at ``eval.temperature``."""
    from pivotrl_nemo.algorithms.evaluation import sampled_turn_scores  # lazy: numpy, tqdm

    return sampled_turn_scores(
        sampler, rows, n, cfg.rollout.sampling, seed, cfg.eval.temperature, cfg.rollout.batch_size
    )


def has_environment(cfg: PivotRLConfig) -> bool:
    return DOMAINS.get(cfg.data.source)(cfg.data).environment() is not None


def evaluate_policy(ctx: StageContext, cfg: PivotRLConfig, policy: Any) -> dict[str, list[float]]:
    """Per-item scores of ``policy`` on every held-out measure this run has (see module doc)."""
    from pivotrl_nemo.algorithms.episodes import play_episodes  # lazy: torch
    from pivotrl_nemo.algorithms.rollouts import TurnSampler
    from pivotrl_nemo.pipeline.candidates import ood_rows
    from pivotrl_nemo.rollout.base import SamplingParams
    from pivotrl_nemo.verifiers.registry import build_verifier

    rt, e, c = ctx.runtime, cfg.eval, cfg.compare
    engine, _ = rt.engine_for(policy)
    out: dict[str, list[float]] = {}
    rows, _ = load_pivot_rows(str(ctx.layout.candidates(e.split)), cfg.data.skip_invalid)
    sampler = TurnSampler(engine, rt.tokenizer, cfg.data, rt.verifier)
    out["turn"] = sampled_scores(sampler, rows, cfg, e.samples_per_candidate, e.seed)
    if has_environment(cfg):
        episodes = split_trajectories(ctx, e.split)
        if c.episode_eval_max:
            episodes = episodes[: c.episode_eval_max]
        s = cfg.rollout.sampling
        params = SamplingParams(e.temperature, s.top_p, s.max_new_tokens, seed=e.seed)
        plays = play_episodes(
            engine, rt.tokenizer, cfg.data, environment_factory(cfg), episodes, c.episode_samples, params,
            turn_limit=c.e2e_turn_limit,
        )  # fmt: skip
        out["episode"] = [sum(p.check.success for p in g) / len(g) for g in plays]
        out["episode_turns"] = [sum(p.check.fraction for p in g) / len(g) for g in plays]
    ood = [r for r in ood_rows(ctx, "ood_test") if PivotRow.of(r).expected_type != "message"]
    if ood:
        verifier = build_verifier(DOMAINS.get(cfg.data.ood_source).default_verifier, cfg.verifier)
        ood_sampler = TurnSampler(engine, rt.tokenizer, cfg.data, verifier)
        out["ood"] = sampled_scores(ood_sampler, ood, cfg, e.samples_per_candidate, e.seed)
    return out


def validation_fn(ctx: StageContext, cfg: PivotRLConfig, engine: Any):
    """Turn-level accuracy on a fixed validation subset, one sample each, with the arm's live
    engine (weights synced after every step): ``{"val/turn_acc": ...}`` for the shared loop."""
    from pivotrl_nemo.algorithms.rollouts import TurnSampler  # lazy: torch

    c = cfg.compare
    if c.val_every <= 0:
        return None
    split = "val" if ctx.layout.candidates("val").exists() and _nonempty(ctx, "val") else "rl"
    rows = load_pivot_rows(str(ctx.layout.candidates(split)), cfg.data.skip_invalid)[0][: c.val_max_candidates]
    sampler = TurnSampler(engine, ctx.runtime.tokenizer, cfg.data, ctx.runtime.verifier)

    def val(step: int) -> dict[str, float]:
        scores = sampled_scores(sampler, rows, cfg, 1, cfg.eval.seed + 10_007)
        return {"val/turn_acc": sum(scores) / max(len(scores), 1)}

    return val


def _nonempty(ctx: StageContext, split: str) -> bool:
    with open(ctx.layout.candidates(split), "rb") as f:
        return bool(f.read(1))
