"""``build``: expert trajectories from the configured domain, and the trajectory-id split."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

from pivotrl_nemo.config import PivotRLConfig
from pivotrl_nemo.data.actions import render_action
from pivotrl_nemo.data.extract import split_ids
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.candidates import candidates_by_split
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
    if cfg.model.tokenizer_vocab_size > 0:
        _train_domain_tokenizer(ctx)
    n_calls = sum(len(m.get("tool_calls") or []) for t in trajs for m in t["messages"] if m["role"] == "assistant")
    return {
        "trajectories": len(trajs),
        "tool_calls": n_calls,
        "skipped_invalid": info.get("skipped_invalid", 0),
        "by_split": dict(Counter(assignment.values())),
    }


def _train_domain_tokenizer(ctx: StageContext) -> None:
    """A BPE of model.tokenizer_vocab_size tokens trained on the sft and rl splits' rendered
    prompts and actions (never the test split), from the base tokenizer's pipeline."""
    from pivotrl_nemo.data.tokenizer import load_tokenizer  # lazy: transformers

    cfg, layout = ctx.cfg, ctx.layout
    base = load_tokenizer(cfg.model.tokenizer)
    cands = candidates_by_split(ctx)
    texts = []
    for split in ("sft", "rl"):
        for r in cands.get(split, []):
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
