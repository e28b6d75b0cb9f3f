"""``sft``: pi_0, supervised fine-tuning of a fresh (or imported) policy on the 'sft' split, plus
the OOD family's 'ood_sft' part (``data.ood_source``): a skill pi_0 has that RL does not train."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pivotrl_nemo.config import to_yaml
from pivotrl_nemo.data.actions import render_action
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.candidates import candidates_by_split, first_candidates, ood_rows
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.rollout.chat import render_training_example
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.utils.metrics import MetricsWriter

log = get_logger(__name__)


def sft_examples(ctx: StageContext, rows: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, action ids + end-of-turn) of each row's expert action."""
    rt = ctx.runtime
    out = []
    for r in rows:
        action = render_action(PivotRow.of(r).expected)
        ids, mask = render_training_example(r, action, rt.tokenizer, ctx.cfg.data)
        start = mask.index(1)  # the mask is 1 exactly on the action and its end-of-turn token
        out.append((ids[:start], ids[start:]))
    return out


def sft_rows(
    ctx: StageContext, cands: dict[str, list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows pi_0 trains on: the 'sft' split's (of ``cands``, ``candidates_by_split``) and the
    OOD family's 'ood_sft' ([] without ``data.ood_source``); never 'ood_test', which measures
    out-of-domain retention."""
    return cands["sft"], ood_rows(ctx, "ood_sft")


@stage(
    "sft",
    upstream=("build",),
    sections=lambda c: [c.model, c.sft, c.data, c.seed],
    state_dirs=("sft",),
    help="pi_0: cross-entropy on the sft split's expert actions (+ the OOD family's ood_sft)",
)
def sft(ctx: StageContext) -> dict[str, Any]:
    """pi_0: supervised fine-tuning of a fresh policy on the expert actions of the 'sft' split
    (and of 'ood_sft', with ``data.ood_source``)."""
    from pivotrl_nemo.algorithms.sft import action_nll, train_sft  # lazy: torch, megatron
    from pivotrl_nemo.models.megatron.checkpoint import Retention

    cfg, rt = ctx.cfg, ctx.runtime
    if cfg.sft.steps == 0 and rt.init_checkpoint:  # pi_0 is the initial checkpoint as it is
        log.info("sft: sft.steps=0: pi_0 is %s; nothing to train or write", rt.init_checkpoint)
        return {"examples": 0, "final_loss": None, "heldout_action_nll": None, "init_checkpoint": rt.init_checkpoint}
    cands = candidates_by_split(ctx, ("sft", "val"))  # pi_0's data, held as dicts (+ its tokens)
    in_domain, ood_sft = sft_rows(ctx, cands)
    train_ex = sft_examples(ctx, in_domain + ood_sft)
    log.info("sft: %d examples (%d sft, %d ood_sft)", len(train_ex), len(in_domain), len(ood_sft))
    policy = rt.new_policy(cfg.sft.optim, total_steps=max(cfg.sft.steps, 1), freeze_router=False)
    if rt.init_checkpoint:
        policy.load(rt.init_checkpoint, load_optimizer=False)
        log.info("sft: starting from %s", rt.init_checkpoint)
    last: dict[str, Any] = {}
    if cfg.sft.steps > 0:
        with MetricsWriter(ctx.layout.sft_dir, wandb=cfg.logging.wandb, run_config=cfg) as mw:
            last = train_sft(
                policy,
                train_ex,
                cfg.sft,
                rt.pad_id,
                mw,
                impl=cfg.loss.impl,
                micro_batch_size=cfg.algorithm.micro_batch_size,
            )
    held = cands.get("val", [])[:64] or first_candidates(ctx, "rl", 64)
    nll = action_nll(policy, sft_examples(ctx, held), rt.pad_id) if held else None
    # pi_0: one dist checkpoint (weights, config); a re-run replaces it. Weights only: every
    # reader loads it with load_optimizer=False (an RL run starts a fresh optimizer from it)
    policy.save(
        ctx.layout.sft_checkpoint,
        policy.step_count,
        metrics=last,
        config_yaml=to_yaml(cfg),
        retention=Retention(keep_last=1),
        save_optimizer=False,
    )
    return {
        "examples": len(train_ex),
        "sft_examples": len(in_domain),
        "ood_sft_examples": len(ood_sft),
        "final_loss": last.get("sft/loss"),
        "heldout_action_nll": nll,
        "init_checkpoint": rt.init_checkpoint,
    }
