"""The arms ``pivotrl compare`` trains: PivotRL, its two ablations, SFT and end-to-end RL.

Every arm starts from the same pi_0 (the base run's ``sft`` checkpoint), trains on the same
RL split, and leaves a checkpoint in ``<arm dir>/train/checkpoint`` that ``compare`` evaluates
the same way for all. An arm is one function registered in ``ARMS``::

    @ARMS.register("my_arm")
    def my_arm(arm: ArmContext) -> dict: ...   # trains; returns {"rollout_turns": ..., ...}

It returns what it cost: ``rollout_turns`` (assistant turns generated while training),
``profile_turns`` (turns generated before training, e.g. profiling; reported separately) and
anything else worth recording. Every arm runs on the shared loop (checkpoints, exact resume,
SIGTERM -> 143 -> resume).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pivotrl_nemo.config import PivotRLConfig
from pivotrl_nemo.data.row_store import load_pivot_rows
from pivotrl_nemo.pipeline.stage import StageContext
from pivotrl_nemo.registry import DOMAINS, Registry
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import atomic_write_jsonl, read_jsonl
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.utils.metrics import MetricsWriter

log = get_logger(__name__)


@dataclass
class ArmContext:
    """What an arm receives: its config (the arm's seed applied), the base run, its directory."""

    cfg: PivotRLConfig
    base: StageContext
    """The base run (pi_0, candidates, pivots) every arm shares."""
    out_dir: Path
    make_val_fn: Callable[[Any], Callable[[int], dict[str, float]] | None]
    """engine -> periodic validation function for the shared loop (None when disabled)."""

    @property
    def train_dir(self) -> Path:
        return self.out_dir / "train"


ArmFn = Callable[[ArmContext], dict[str, Any]]
ARMS: Registry[ArmFn] = Registry("arm", "compare.arms")


ArmSettings = Callable[[Any], list[Any]]
"""``compare`` config -> the values of its settings an arm's training reads."""


def reads(settings: ArmSettings) -> Callable[[ArmFn], ArmFn]:
    """Declares which ``compare.*`` settings an arm's training reads: they (with the algorithm,
    loss, rollout, verifier, profile and filter sections) make its fingerprint, so changing
    another arm's settings does not retrain it. An arm that declares none depends on all of them
    (``arm_settings``)."""

    def mark(fn: ArmFn) -> ArmFn:
        fn.settings = settings  # type: ignore[attr-defined]
        return fn

    return mark


def _validation(c: Any) -> list[Any]:
    return [c.val_every, c.val_max_candidates]


def arm_settings(arm: str, cfg: PivotRLConfig) -> list[Any]:
    """The ``compare.*`` values arm ``arm`` declared with ``reads``; every training setting when
    it declared none (an arm from a plugin that does not say)."""
    c = cfg.compare
    declared = getattr(ARMS.get(arm), "settings", None)
    if declared is not None:
        return declared(c)
    every = [c.sft_steps, c.sft_batch_size, c.sft_optim, c.e2e_steps, c.e2e_reward, c.e2e_turn_limit]
    return every + [c.max_assistant_turns_per_user_turn, c.episode_check] + _validation(c)


def _rl_rows(arm: ArmContext) -> Sequence[dict[str, Any]]:
    rows, _ = load_pivot_rows(str(arm.base.layout.candidates("rl")), arm.cfg.data.skip_invalid)
    return rows


def _train_one_turn(arm: ArmContext, rows: Sequence[dict[str, Any]], verifier: Any = None) -> dict[str, Any]:
    """GRPO with one-turn rollouts on ``rows`` from pi_0 (PivotRL's loop), under ``verifier``."""
    from pivotrl_nemo.algorithms.pivot_rl import train_pivot_rl  # lazy: torch, megatron
    from pivotrl_nemo.algorithms.rollouts import TurnSampler

    cfg, rt = arm.cfg, arm.base.runtime
    policy = rt.pi0(cfg.algorithm.optim, cfg.algorithm.steps)
    if not rows:  # e.g. a strict reward under which pi_0 has no pivot: the arm's policy stays pi_0
        log.warning("%s: no rows to train on; its policy is pi_0", arm.out_dir.parent.name)
        policy.save(arm.train_dir / "checkpoint", 0, extra={"loop_step": 0}, config_yaml="", save_optimizer=False)
        return {"rollout_turns": 0.0, "train_rows": 0, "note": "no rows to train on: the policy is pi_0"}
    engine, sync = rt.engine_for(policy)
    sampler = TurnSampler(engine, rt.tokenizer, cfg.data, verifier or rt.verifier)
    with MetricsWriter(arm.train_dir, wandb=cfg.logging.wandb, run_config=cfg) as mw:
        train_pivot_rl(
            policy,
            sampler,
            sync,
            rows,
            cfg,
            arm.train_dir,
            mw,
            rt.pad_id,
            val_fn=arm.make_val_fn(engine),
            val_every=cfg.compare.val_every,
            desc=arm.out_dir.parent.name,
        )
    a = cfg.algorithm
    return {"rollout_turns": float(a.steps * a.prompts_per_step * a.group_size), "train_rows": len(rows)}


@ARMS.register("pivotrl")
@reads(_validation)
def pivotrl(arm: ArmContext) -> dict[str, Any]:
    """PivotRL: GRPO on the filtered pivots (the base run's profile and filter)."""
    pivots, _ = load_pivot_rows(str(arm.base.layout.pivots), arm.cfg.data.skip_invalid)
    out = _train_one_turn(arm, pivots)
    out["profile_turns"] = float(len(_rl_rows(arm)) * arm.cfg.profile.k)
    return out


@ARMS.register("pivotrl_random_turns")
@reads(_validation)
def pivotrl_random_turns(arm: ArmContext) -> dict[str, Any]:
    """Ablation without the filter: as many turns as there are pivots, drawn uniformly from all
    extracted RL turns (seeded by the arm's seed), same steps; no profiling needed."""
    n = len(load_pivot_rows(arm.base.layout.pivots, arm.cfg.data.skip_invalid, lazy=True)[0])
    rows = random_turns(_rl_rows(arm), n, arm.cfg.algorithm.seed)
    atomic_write_jsonl(arm.out_dir / "rows.jsonl", rows)
    out = _train_one_turn(arm, rows)
    out["profile_turns"] = 0.0
    return out


def random_turns(rows: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows drawn without replacement from all ``rows`` (every row equally likely)."""
    picked = random.Random(seed).sample(range(len(rows)), min(n, len(rows)))  # as sample(rows): same rows
    return [rows[j] for j in picked]  # parsing only those (sample() may copy its population)


@ARMS.register("pivotrl_strict_reward")
@reads(_validation)
def pivotrl_strict_reward(arm: ArmContext) -> dict[str, Any]:
    """Ablation without the functional reward: profiling, filtering and training all use the
    ``strict`` (string-match) verifier; evaluation stays functional like every arm's."""
    from pivotrl_nemo.algorithms.filtering import filter_pivots  # lazy: torch via profiling
    from pivotrl_nemo.algorithms.profiling import attach_profile, profile_candidates
    from pivotrl_nemo.algorithms.rollouts import TurnSampler
    from pivotrl_nemo.verifiers.registry import build_verifier

    cfg, rt = arm.cfg, arm.base.runtime
    strict = build_verifier("strict", cfg.verifier)
    rows = _rl_rows(arm)
    pi0 = rt.pi0()
    engine, _ = rt.engine_for(pi0)
    chunk = max(1, cfg.rollout.batch_size // cfg.profile.k)
    profs = profile_candidates(
        rows,
        TurnSampler(engine, rt.tokenizer, cfg.data, strict),
        cfg.profile,
        cfg.rollout.sampling,
        arm.out_dir / "profile_log.jsonl",
        policy_id="pi0:sft:strict",
        chunk_candidates=chunk,
    )
    pivots, summary = filter_pivots([attach_profile(r, profs[r["id"]]) for r in rows], cfg.filter)
    log.info("strict reward: %d pivots of %d candidates", len(pivots), len(rows))
    del pi0, engine
    out = _train_one_turn(arm, [p for p in pivots if isinstance(p, dict)], strict)
    out.update(profile_turns=float(len(rows) * cfg.profile.k), strict_pivots=len(pivots), strict_filter=summary)
    return out


@ARMS.register("sft")
@reads(lambda c: [c.sft_steps, c.sft_batch_size, c.sft_optim] + _validation(c))
def sft(arm: ArmContext) -> dict[str, Any]:
    """SFT continued from pi_0 on the same RL-split trajectories (every assistant turn's expert
    action), for as many optimizer steps on as many sequences per step as an RL arm; on the
    shared loop, so it checkpoints, resumes exactly and stops on SIGTERM like the RL arms."""
    from pivotrl_nemo.algorithms.batches import epoch_batches
    from pivotrl_nemo.algorithms.rl_loop import run_rl_loop  # lazy: torch, megatron
    from pivotrl_nemo.algorithms.sft import sft_step
    from pivotrl_nemo.config import to_yaml
    from pivotrl_nemo.pipeline.stages.sft import sft_examples

    cfg, rt, c, a = arm.cfg, arm.base.runtime, arm.cfg.compare, arm.cfg.algorithm
    steps = c.sft_steps or a.steps
    batch = c.sft_batch_size or a.prompts_per_step * a.group_size
    examples = sft_examples(arm.base, _rl_rows(arm))
    if not examples:
        raise UserError("sft arm: the rl split has no candidates to train on")
    policy = rt.pi0(c.sft_optim, steps)
    batches = epoch_batches(len(examples), batch, steps, a.seed)

    def step_fn(step: int) -> dict[str, float]:
        picked = [examples[i] for i in batches[step - 1]]
        return sft_step(policy, picked, rt.pad_id, cfg.loss.impl, a.micro_batch_size)

    engine, sync = rt.engine_for(policy)  # only for the validation curve
    val = arm.make_val_fn(engine)

    def val_fn(step: int) -> dict[str, float]:
        sync.sync_weights()  # SFT steps do not refresh the engine; validation needs the current weights
        return val(step) if val is not None else {}

    with MetricsWriter(arm.train_dir, wandb=cfg.logging.wandb, run_config=cfg) as mw:
        run_rl_loop(
            policy, sync, step_fn, replace(a, steps=steps), arm.train_dir, mw, to_yaml(cfg),
            desc="sft", val_fn=val_fn if val is not None else None, val_every=c.val_every,
        )  # fmt: skip
    tokens = sum(len(examples[i][1]) for b in batches for i in b)
    return {"rollout_turns": 0.0, "profile_turns": 0.0, "train_rows": len(examples), "tokens_trained": float(tokens)}


@ARMS.register("e2e")
@reads(
    lambda c: (
        [c.e2e_steps, c.e2e_reward, c.e2e_turn_limit, c.max_assistant_turns_per_user_turn, c.episode_check]
        + _validation(c)
    )
)
def e2e(arm: ArmContext) -> dict[str, Any]:
    """End-to-end multi-turn GRPO on whole RL-split episodes in the domain's environment."""
    from pivotrl_nemo.algorithms.e2e import train_e2e  # lazy: torch, megatron

    cfg, rt, c = arm.cfg, arm.base.runtime, arm.cfg.compare
    cfg = replace(cfg, algorithm=replace(cfg.algorithm, steps=c.e2e_steps or cfg.algorithm.steps))
    episodes = split_trajectories(arm.base, "rl")
    make_env = environment_factory(cfg)
    policy = rt.pi0(cfg.algorithm.optim, cfg.algorithm.steps)
    engine, sync = rt.engine_for(policy)
    with MetricsWriter(arm.train_dir, wandb=cfg.logging.wandb, run_config=cfg) as mw:
        last = train_e2e(
            policy,
            engine,
            sync,
            rt.tokenizer,
            make_env,
            episodes,
            cfg,
            arm.train_dir,
            mw,
            rt.pad_id,
            val_fn=arm.make_val_fn(engine),
            val_every=c.val_every,
        )
    return {"rollout_turns": float(last.get("rollout/turns_cumulative", 0.0)), "profile_turns": 0.0}


def split_trajectories(ctx: StageContext, split: str) -> list[dict[str, Any]]:
    """The base run's trajectories of one split (whole episodes), in file order."""
    import json

    assignment = json.loads(ctx.layout.splits.read_text())
    return [t for t in read_jsonl(ctx.layout.trajectories) if assignment.get(t["id"]) == split]


def environment_factory(cfg: PivotRLConfig) -> Callable[[], Any]:
    """A function making fresh episode environments of the configured domain."""
    domain = DOMAINS.get(cfg.data.source)(cfg.data)
    if domain.environment() is None:
        raise UserError(
            f"data.source={cfg.data.source!r} cannot play whole episodes (its domain has no environment): "
            "drop 'e2e' from compare.arms, or use a domain with an environment such as bfcl"
        )
    turns, check = cfg.compare.max_assistant_turns_per_user_turn, cfg.compare.episode_check
    return lambda: domain.environment(max_assistant_turns_per_user_turn=turns, check_mode=check)
