"""Candidates (pivot rows) of every split, extracted from the built trajectories.

``extract`` writes them; ``build`` (domain tokenizer) and ``sft`` recompute them from the same
trajectories so that they need not wait for ``extract``.
"""

from __future__ import annotations

import json
from typing import Any

from pivotrl_nemo.data.extract import extract_candidates
from pivotrl_nemo.pipeline.stage import StageContext
from pivotrl_nemo.utils.io import read_jsonl


def candidates_by_split(ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
    """split -> pivot rows of every eligible assistant turn of that split's trajectories."""
    trajs = read_jsonl(ctx.layout.trajectories)
    assignment = json.loads(ctx.layout.splits.read_text())
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in ctx.cfg.data.split_fractions}
    name = ctx.cfg.verifier.name
    for t in trajs:
        out[assignment[t["id"]]].extend(extract_candidates(t, assignment[t["id"]], name))
    return out
