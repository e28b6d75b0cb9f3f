"""``build``: expert trajectories from the configured domain, and the trajectory-id split; with
``data.ood_source``, also the out-of-domain family's trajectories and their own split."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from typing import Any

from pivotrl_nemo.config import ConfigError, PivotRLConfig
from pivotrl_nemo.data.actions import render_action
from pivotrl_nemo.data.extract import split_ids
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.candidates import OOD_PREFIX, candidates_by_split, ood_candidates_by_split
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.registry import DOMAINS
from pivotrl_nemo.rollout.chat import render_messages
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_jsonl
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)


def _sections(c: PivotRLConfig) -> list[Any]:
    d = c.data
    return [
        d.source,
        d.path,
        d.bfcl_categories,
        d.max_trajectories,
        d.split_fractions,
        d.split_seed,
        d.ood_source,
        d.ood_split_fractions,
        d.ood_max_trajectories,
        c.model.tokenizer,
        c.model.tokenizer_vocab_size,
    ]


@stage("build", sections=_sections, help="expert trajectories from the domain (data.source) + splits by trajectory")
def build(ctx: StageContext) -> dict[str, Any]:
    """Expert trajectories (BFCL executed on its real backends, or a validated JSONL) + splits."""
    cfg, layout = ctx.cfg, ctx.layout
    d = cfg.data
    trajs, info = DOMAINS.get(d.source)(d).trajectories()
    assignment = split_ids([t["id"] for t in trajs], d.split_fractions, d.split_seed)
    atomic_write_jsonl(layout.trajectories, trajs)
    atomic_write_json(layout.splits, assignment)
    ood: dict[str, Any] = {}
    if d.ood_source:
        ood = _build_ood(ctx, {t["id"] for t in trajs})
    else:  # a previous build's OOD family is not this run's data
        layout.ood_trajectories.unlink(missing_ok=True)
        layout.ood_splits.unlink(missing_ok=True)
    if cfg.model.tokenizer_vocab_size > 0:
        _train_domain_tokenizer(ctx)
    n_calls = sum(len(m.get("tool_calls") or []) for t in trajs for m in t["messages"] if m["role"] == "assistant")
    return {
        "trajectories": len(trajs),
        "tool_calls": n_calls,
        "skipped_invalid": info.get("skipped_invalid", 0),
        "by_split": dict(Counter(assignment.values())),
        **ood,
    }


def _build_ood(ctx: StageContext, main_ids: set[str]) -> dict[str, Any]:
    """The ``data.ood_source`` family: its trajectories (``ood_max_trajectories`` of them) split
    by trajectory id with ``ood_split_fractions``. An id shared with the main domain is refused:
    ids key the splits, so a shared one would leak OOD test data into (or out of) training."""
    d, layout = ctx.cfg.data, ctx.layout
    ood_cfg = dataclasses.replace(d, source=d.ood_source, max_trajectories=d.ood_max_trajectories)
    trajs, info = DOMAINS.get(d.ood_source)(ood_cfg).trajectories()
    shared = sorted(main_ids & {t["id"] for t in trajs})
    if shared:
        raise ConfigError(
            f"config key 'data.ood_source': {len(shared)} trajectory id(s) of {d.ood_source!r} are also ids of "
            f"data.source={d.source!r} (e.g. {shared[0]!r}); choose an OOD domain with its own ids"
        )
    assignment = split_ids([t["id"] for t in trajs], d.ood_split_fractions, d.split_seed)
    atomic_write_jsonl(layout.ood_trajectories, trajs)
    atomic_write_json(layout.ood_splits, assignment)
    by_split = dict(Counter(assignment.values()))
    log.info("build: %d OOD trajectories from %r, by split %s", len(trajs), d.ood_source, by_split)
    return {
        "ood_trajectories": len(trajs),
        "ood_skipped_invalid": info.get("skipped_invalid", 0),
        "ood_by_split": by_split,
    }


def tokenizer_rows(ctx: StageContext) -> list[dict[str, Any]]:
    """The candidates the domain tokenizer is trained on: the sft and rl splits', and the OOD
    family's 'ood_sft' (pi_0 trains on it); never a test split's."""
    cands = {**candidates_by_split(ctx, ("sft", "rl")), **ood_candidates_by_split(ctx)}
    return [r for split in ("sft", "rl", OOD_PREFIX + "sft") for r in cands.get(split, [])]


def _train_domain_tokenizer(ctx: StageContext) -> None:
    """A BPE of model.tokenizer_vocab_size tokens trained on the sft and rl splits' rendered
    prompts and actions, plus the OOD family's sft part (pi_0 trains on it); never a test split:
    a tokenizer fitted to held-out text would flatter its evaluation."""
    from pivotrl_nemo.data.tokenizer import load_tokenizer  # lazy: transformers

    cfg, layout = ctx.cfg, ctx.layout
    base = load_tokenizer(cfg.model.tokenizer)
    texts = []
    for r in tokenizer_rows(ctx):
        msgs = render_messages(r, cfg.data, base)
        prompt = str(base.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        texts.append(prompt + render_action(PivotRow.of(r).expected))
    tok = base.train_new_from_iterator(texts, vocab_size=cfg.model.tokenizer_vocab_size)
    tmp = layout.tokenizer.with_name(layout.tokenizer.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(layout.tokenizer, ignore_errors=True)
    tmp.rename(layout.tokenizer)
    log.info("trained a %d-token domain tokenizer on %d texts -> %s", len(tok), len(texts), layout.tokenizer)
