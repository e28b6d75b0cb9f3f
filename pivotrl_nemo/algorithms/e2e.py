"""End-to-end multi-turn GRPO, the baseline PivotRL is measured against (paper Sec. 5.3).

Each step plays ``algorithm.prompts_per_step`` whole episodes ``algorithm.group_size`` times
each (``episodes.play_episodes``: the policy's own calls run on the real backends and their
outputs are fed back); the reward is episode-level (``compare.e2e_reward``), the advantage is
the group's (same estimator as PivotRL), and every sampled assistant turn of an episode is
trained on with its episode's advantage (token-level loss, same optimizer and clipping as
PivotRL: ``grpo_step.grpo_update``). Checkpoints, resume, preemption and rollout-turn counts are
the shared loop's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import to_yaml
from ..config.schema import AlgorithmConfig, PivotRLConfig
from ..distributed.dp import DataParallel
from ..domains.base import Environment
from ..rollout.base import SamplingParams
from ..utils.metrics import MetricsWriter
from .advantages import compute_advantages
from .batches import epoch_batches
from .episodes import EpisodeRollout, play_episodes
from .grpo_step import Sample, grpo_update
from .rl_loop import ValFn, run_rl_loop


def episode_samples(
    groups: list[list[EpisodeRollout]], reward: str, cfg: AlgorithmConfig
) -> tuple[list[Sample], torch.Tensor]:
    """One ``Sample`` per sampled assistant turn, with its episode's group advantage."""
    rewards = torch.tensor([[r.reward(reward) for r in g] for g in groups], dtype=torch.float32)
    adv = compute_advantages(rewards, cfg.advantage)
    samples = []
    for gi, g in enumerate(groups):
        for ei, ep in enumerate(g):
            for t in ep.turns:
                c = t.completion
                drop = cfg.mask_truncated and c.finish_reason == "length"
                keep = [0 if drop else 1] * len(c.token_ids)
                samples.append(Sample(t.prompt_ids, c.token_ids, c.logprobs, float(adv[gi, ei]), keep))
    return samples, rewards


def train_e2e(
    policy,
    engine,
    synchronizer,
    tokenizer: Any,
    make_env: Callable[[], Environment],
    episodes: list[dict[str, Any]],
    cfg: PivotRLConfig,
    out_dir: Path,
    metrics: MetricsWriter | None,
    pad_id: int,
    dp: DataParallel | None = None,
    val_fn: ValFn | None = None,
    val_every: int = 0,
    progress: bool = True,
) -> dict:
    """Run (or resume) end-to-end GRPO on whole ``episodes`` (one data-parallel rank)."""
    a, c = cfg.algorithm, cfg.compare
    dp = dp or DataParallel(0, 1)
    if dp.size > 1:
        raise NotImplementedError("end-to-end RL runs on one data-parallel rank for now")
    batches = epoch_batches(len(episodes), a.prompts_per_step, a.steps, a.seed)
    s = cfg.rollout.sampling

    def step_fn(step: int) -> dict:
        t0 = time.perf_counter()
        params = SamplingParams(s.temperature, s.top_p, s.max_new_tokens, seed=(a.seed * 1_000_003 + step) * 4096)
        groups = play_episodes(
            engine,
            tokenizer,
            cfg.data,
            make_env,
            [episodes[i] for i in batches[step - 1]],
            a.group_size,
            params,
            turn_limit=c.e2e_turn_limit,
        )
        engine.sleep()
        t1 = time.perf_counter()
        samples, rewards = episode_samples(groups, c.e2e_reward, a)
        m = grpo_update(policy, samples, rewards, a, pad_id, s.temperature, cfg.loss.impl, dp)
        t2 = time.perf_counter()
        synchronizer.sync_weights()
        plays = [ep for g in groups for ep in g]
        out = {f"train/{k}": v for k, v in m.items()}
        out.update(
            {
                "train/episode_success": sum(ep.check.success for ep in plays) / len(plays),
                "train/episode_turn_fraction": sum(ep.check.fraction for ep in plays) / len(plays),
                "train/lr": policy.current_lr(),
                "rollout/turns": float(sum(len(ep.turns) for ep in plays)),
                "time/rollout_s": t1 - t0,
                "time/train_s": t2 - t1,
                "time/weight_sync_s": time.perf_counter() - t2,
            }
        )
        return out

    return run_rl_loop(
        policy, synchronizer, step_fn, a, out_dir, metrics, to_yaml(cfg), dp, progress, "e2e", val_fn, val_every
    )
