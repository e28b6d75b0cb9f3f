"""Candidates (pivot rows) of every split, extracted from the built trajectories.

``extract`` writes them; ``build`` (domain tokenizer) and ``sft`` recompute them from the same
trajectories so that they need not wait for ``extract``. The out-of-domain family
(``data.ood_source``) has its own splits, named ``ood_<split>`` ('ood_sft' is mixed into pi_0's
SFT data, 'ood_test' measures out-of-domain retention), judged by its domain's default verifier.
"""

from __future__ import annotations

import json
from typing import Any

from pivotrl_nemo.data.extract import extract_candidates
from pivotrl_nemo.pipeline.stage import StageContext
from pivotrl_nemo.registry import DOMAINS
from pivotrl_nemo.utils.io import read_jsonl

OOD_PREFIX = "ood_"
"""Candidate split names of the OOD family: ``ood_`` + its ``data.ood_split_fractions`` key."""


def candidates_by_split(ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
    """split -> pivot rows of every eligible assistant turn of that split's trajectories."""
    trajs = read_jsonl(ctx.layout.trajectories)
    assignment = json.loads(ctx.layout.splits.read_text())
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in ctx.cfg.data.split_fractions}
    name = ctx.cfg.verifier.name
    for t in trajs:
        out[assignment[t["id"]]].extend(extract_candidates(t, assignment[t["id"]], name))
    return out


def ood_candidates_by_split(ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
    """'ood_<split>' -> pivot rows of the OOD trajectories of that split ({} without
    ``data.ood_source``); ``agent_ref`` is the OOD domain's default verifier, not
    ``verifier.name``, since that one judges the main domain."""
    d = ctx.cfg.data
    if not d.ood_source:
        return {}
    trajs = read_jsonl(ctx.layout.ood_trajectories)
    assignment = json.loads(ctx.layout.ood_splits.read_text())
    verifier = DOMAINS.get(d.ood_source).default_verifier
    out: dict[str, list[dict[str, Any]]] = {OOD_PREFIX + s: [] for s in d.ood_split_fractions}
    for t in trajs:
        split = OOD_PREFIX + assignment[t["id"]]
        out[split].extend(extract_candidates(t, split, verifier))
    return out


def ood_rows(ctx: StageContext, split: str) -> list[dict[str, Any]]:
    """The OOD candidates of ``split`` ('ood_test' or 'test'; 'ood_sft' or 'sft'): [] when there
    is no ``data.ood_source`` (or the split is empty). For eval / compare: out-of-domain retention."""
    name = split if split.startswith(OOD_PREFIX) else OOD_PREFIX + split
    return ood_candidates_by_split(ctx).get(name, [])
