"""``pivotrl compare``: pi_0 once, every arm from it, every arm evaluated the same way, one table.

Layout under ``run_dir``: the base run's stages as ``pivotrl run`` writes them (build, sft,
extract, profile, filter), then ``compare/<arm>/seed<k>/`` per trained unit (``train/`` with
metrics and checkpoints, ``done.json`` with what training cost, ``eval.json`` with per-item
held-out scores) and ``compare/pi0/eval.json``; ``comparison.json``, ``comparison.md`` and
``plots/compare_*.png`` at the top.

Re-running is incremental: the base stages are skipped when done (the runner's markers); a unit
whose ``.fingerprint`` matches its configuration is skipped when done and resumed from its last
checkpoint when not; a unit trained under another configuration is discarded and redone.
Evaluations are cached the same way. The whole command holds the run directory's lock.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pivotrl_nemo.config import ConfigError, PivotRLConfig, fingerprint, load_config
from pivotrl_nemo.pipeline.compare.arms import ARMS, ArmContext, arm_settings
from pivotrl_nemo.pipeline.compare.evaluation import evaluate_policy, validation_fn
from pivotrl_nemo.pipeline.compare.table import write_comparison
from pivotrl_nemo.pipeline.stage import StageContext, command
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_text
from pivotrl_nemo.utils.logging import configure_logging, get_logger

log = get_logger(__name__)

BASE_STAGES = ("build", "sft", "extract", "profile", "filter")


def units(cfg: PivotRLConfig) -> list[tuple[str, int]]:
    """(arm, seed) for every unit to train, in ``compare.arms`` order."""
    c = cfg.compare
    for a in c.arms:
        if a not in ARMS:
            raise ConfigError(f"config key 'compare.arms': {ARMS.unknown_message(a)}")
    if not c.seeds:
        raise ConfigError("config key 'compare.seeds': needs at least one seed")
    if c.baseline not in c.arms:
        raise ConfigError(f"config key 'compare.baseline': {c.baseline!r} is not one of compare.arms {c.arms}")
    return [(a, s) for a in c.arms for s in (c.seeds if a in c.seeded_arms else c.seeds[:1])]


def _train_fingerprint(cfg: PivotRLConfig, arm: str, base_fp: str) -> str:
    """What an arm's training depends on: the shared RL sections and the ``compare.*`` settings
    the arm declares it reads (``arms.reads``)."""
    training = arm_settings(arm, cfg)
    return fingerprint(
        arm, cfg.algorithm, cfg.loss, cfg.rollout, cfg.verifier, cfg.profile, cfg.filter, training, base_fp
    )


def _eval_fingerprint(cfg: PivotRLConfig, train_fp: str) -> str:
    c = cfg.compare
    episodes = [c.episode_eval_max, c.episode_samples, c.e2e_turn_limit, c.episode_check]
    return fingerprint(train_fp, cfg.eval, cfg.rollout.sampling, episodes)


def _fresh_dir(d: Path, fp: str) -> None:
    """``d`` stamped with ``fp``: kept (to resume) when its stamp matches, else emptied."""
    stamp = d / ".fingerprint"
    if d.exists() and (not stamp.exists() or stamp.read_text().strip() != fp):
        log.info("compare: discarding %s (made under another configuration)", d)
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        atomic_write_text(stamp, fp + "\n")


def _cached(path: Path, fp: str) -> dict[str, Any] | None:
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("fingerprint") == fp:
            return data
    return None


def train_unit(base: StageContext, cfg: PivotRLConfig, arm: str, seed: int, base_fp: str) -> dict[str, Any]:
    """Train one (arm, seed) unit unless done under this configuration."""
    arm_cfg = replace(cfg, algorithm=replace(cfg.algorithm, seed=seed))
    d = base.layout.root / "compare" / arm / f"seed{seed}"
    fp = _train_fingerprint(arm_cfg, arm, base_fp)
    done = _cached(d / "done.json", fp)
    if done is not None:
        log.info("compare: %s seed %d done (%s)", arm, seed, d)
        return done
    _fresh_dir(d, fp)
    log.info("compare: training %s seed %d -> %s", arm, seed, d)
    t0 = time.perf_counter()
    ctx = ArmContext(arm_cfg, base, d, lambda engine: validation_fn(base, arm_cfg, engine))
    info = ARMS.get(arm)(ctx)
    info.update(arm=arm, seed=seed, fingerprint=fp, train_seconds=time.perf_counter() - t0)
    atomic_write_json(d / "done.json", info)
    return info


def eval_unit(base: StageContext, cfg: PivotRLConfig, d: Path, checkpoint: Path, fp: str) -> dict[str, Any]:
    """Held-out per-item scores of the policy in ``checkpoint`` (cached in ``d/eval.json``)."""
    efp = _eval_fingerprint(cfg, fp)
    hit = _cached(d / "eval.json", efp)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    policy = base.runtime.new_policy(cfg.algorithm.optim, total_steps=1)
    policy.load(checkpoint, load_optimizer=False)
    scores = evaluate_policy(base, cfg, policy)
    out = {"fingerprint": efp, "scores": scores, "eval_seconds": time.perf_counter() - t0}
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "eval.json", out)
    return out


def run_compare(cfg: PivotRLConfig) -> dict[str, Any]:
    """Everything ``pivotrl compare`` does (module docstring); returns ``comparison.json``'s content."""
    from pivotrl_nemo.pipeline.runner import Runner, stage_seconds

    todo = units(cfg)
    runner = Runner(cfg)
    with runner.lock():
        for name in BASE_STAGES:
            runner.run(name)
        base = runner.context()
        base_fp = runner.marker("filter")["fingerprint"]  # type: ignore[index]
        sft_fp = runner.marker("sft")["fingerprint"]  # type: ignore[index]
        results: dict[str, Any] = {
            "pi0": {"train": {"rollout_turns": 0.0, "profile_turns": 0.0, "train_seconds": 0.0}, "evals": {}}
        }
        results["pi0"]["evals"][0] = eval_unit(
            base, cfg, runner.layout.root / "compare" / "pi0", runner.runtime.pi0_checkpoint, sft_fp
        )
        for arm, seed in todo:
            info = train_unit(base, cfg, arm, seed, base_fp)
            d = runner.layout.root / "compare" / arm / f"seed{seed}"
            ev = eval_unit(base, cfg, d, d / "train" / "checkpoint", info["fingerprint"])
            slot = results.setdefault(arm, {"train": {}, "evals": {}, "seeds": {}})
            slot["seeds"][seed] = info
            slot["evals"][seed] = ev
        return write_comparison(runner.layout, cfg, results, stage_seconds(runner.layout))


@command(
    "compare", usage="pivotrl compare [overrides]", help="train every arm from one pi_0; one table (comparison.md)"
)
def compare_main(args: list[str]) -> int:
    """``pivotrl compare experiment=compare``: pi_0, SFT, PivotRL, its ablations and E2E RL on the
    same data, evaluated on the same held-out turns, episodes and out-of-domain items."""
    cfg = load_config(args)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    configure_logging(cfg.log_level, log_file=str(root / "pivotrl.log"))
    out = run_compare(cfg)
    sys.stdout.write(f"comparison: {root / 'comparison.md'} ({len(out['arms'])} arms)\n")
    return 0
