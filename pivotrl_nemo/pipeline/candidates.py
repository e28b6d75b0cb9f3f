"""Candidates (pivot rows) of every split, extracted from the built trajectories.

``extract`` writes them; ``build`` (domain tokenizer) and ``sft`` recompute them from the same
trajectories so that they need not wait for ``extract``. The out-of-domain family
(``data.ood_source``) has its own splits, named ``ood_<split>`` ('ood_sft' is mixed into pi_0's
SFT data, 'ood_test' measures out-of-domain retention), judged by its domain's default verifier.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import Any

from pivotrl_nemo.data.extract import extract_candidates
from pivotrl_nemo.data.jsonl_index import IndexedJsonlWriter
from pivotrl_nemo.pipeline.stage import StageContext
from pivotrl_nemo.registry import DOMAINS
from pivotrl_nemo.utils.io import iter_jsonl

OOD_PREFIX = "ood_"
"""Candidate split names of the OOD family: ``ood_`` + its ``data.ood_split_fractions`` key."""


CandidateStream = tuple[list[str], Iterator[tuple[str, dict[str, Any]]]]
"""(every split name, an iterator of (split, pivot row)): one trajectory parsed at a time."""


def stream_candidates(
    trajectories: Path, splits: Path, names: list[str], prefix: str, verifier: str
) -> CandidateStream:
    """The candidates of the trajectories in ``trajectories`` (split per ``splits``, a JSON map of
    trajectory id -> split; ``prefix`` + that split names them), ``agent_ref`` = ``verifier``."""
    assignment = json.loads(splits.read_text())

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for _, t in iter_jsonl(trajectories):
            split = prefix + assignment[t["id"]]
            for row in extract_candidates(t, split, verifier):
                yield split, row

    return [prefix + s for s in names], rows()


def candidate_stream(ctx: StageContext) -> CandidateStream:
    """The main family's candidates, streamed from ``data/trajectories.jsonl``."""
    return stream_candidates(
        ctx.layout.trajectories, ctx.layout.splits, list(ctx.cfg.data.split_fractions), "", ctx.cfg.verifier.name
    )


def ood_candidate_stream(ctx: StageContext) -> CandidateStream | None:
    """The OOD family's candidates ('ood_<split>'; None without ``data.ood_source``);
    ``agent_ref`` is the OOD domain's default verifier, not ``verifier.name``, since that one
    judges the main domain."""
    d = ctx.cfg.data
    if not d.ood_source:
        return None
    verifier = DOMAINS.get(d.ood_source).default_verifier
    return stream_candidates(
        ctx.layout.ood_trajectories, ctx.layout.ood_splits, list(d.ood_split_fractions), OOD_PREFIX, verifier
    )


def _grouped(stream: CandidateStream | None, splits: Collection[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    if stream is None:
        return {}
    names, rows = stream
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in names if splits is None or s in splits}
    for split, row in rows:
        if split in out:
            out[split].append(row)
    return out


def candidates_by_split(ctx: StageContext, splits: Collection[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """split -> pivot rows of every eligible assistant turn of that split's trajectories, for
    ``splits`` only (default: all). In memory as dicts (~59 KB per BFCL-shaped row): for SFT's
    examples and the domain tokenizer, which train on them; ``extract`` streams instead."""
    return _grouped(candidate_stream(ctx), splits)


def first_candidates(ctx: StageContext, split: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` candidates of ``split`` (file order), reading no further than needed."""
    return [row for _, row in islice(((s, r) for s, r in candidate_stream(ctx)[1] if s == split), n)]


def ood_candidates_by_split(ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
    """'ood_<split>' -> pivot rows of the OOD trajectories of that split ({} without
    ``data.ood_source``)."""
    return _grouped(ood_candidate_stream(ctx))


def write_candidates(stream: CandidateStream, path_of: Callable[[str], Path]) -> dict[str, dict[str, Any]]:
    """Stream every split's candidates into ``path_of(split)`` (indexed, atomic; one trajectory
    in memory at a time); returns per split the count and the counts by action type."""
    names, rows = stream
    counts: dict[str, Counter] = {s: Counter() for s in names}
    with ExitStack() as stack:
        writers = {s: stack.enter_context(IndexedJsonlWriter(path_of(s))) for s in names}
        for split, row in rows:
            writers[split].write(row)
            counts[split][row["expected_action"]["type"]] += 1
    return {s: {"candidates": sum(c.values()), "by_action_type": dict(c)} for s, c in counts.items()}


def ood_rows(ctx: StageContext, split: str) -> list[dict[str, Any]]:
    """The OOD candidates of ``split`` ('ood_test' or 'test'; 'ood_sft' or 'sft'): [] when there
    is no ``data.ood_source`` (or the split is empty). For eval / compare: out-of-domain retention."""
    name = split if split.startswith(OOD_PREFIX) else OOD_PREFIX + split
    return ood_candidates_by_split(ctx).get(name, [])
