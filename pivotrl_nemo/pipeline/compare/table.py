"""``comparison.json``, ``comparison.md`` and the comparison plots from the evaluated units.

Statistics: an arm trained with several seeds is scored per item (candidate or episode) by the
mean over its seeds; its accuracy's 95% interval resamples items (bootstrap), and its interval
against the baseline arm is the paired bootstrap over the same items (``algorithms.evaluation``).
Per-seed accuracies, their mean and standard deviation are listed too, so seed variance and
item variance can both be read.
"""

from __future__ import annotations

import statistics
from typing import Any

from pivotrl_nemo.algorithms.evaluation import bootstrap_ci, paired_bootstrap_ci
from pivotrl_nemo.config import PivotRLConfig
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_text
from pivotrl_nemo.utils.metrics import read_metrics

METRICS = {"turn_acc": "turn", "episode_success": "episode", "episode_turns": "episode_turns", "ood_acc": "ood"}
"""comparison.json column -> the per-item score list in an eval.json."""


def _mean_scores(evals: dict[Any, dict[str, Any]], key: str) -> list[float] | None:
    lists = [e["scores"][key] for e in evals.values() if key in e["scores"]]
    if not lists:
        return None
    return [sum(x) / len(x) for x in zip(*lists)]


def _training_budget(layout: RunLayout, arm: str, seeds: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean optimizer steps and action tokens trained on per seed: the compute every arm is
    compared at (RL arms: ``train/trained_tokens`` per step; SFT: its examples' action tokens)."""
    if not seeds:
        return 0.0, 0.0
    steps = tokens = 0.0
    for info in seeds:
        path = layout.root / "compare" / arm / f"seed{info['seed']}" / "train" / "metrics.jsonl"
        rows = read_metrics(path) if path.exists() else []
        steps += len(rows)
        recorded = info.get("tokens_trained", info.get("approx_tokens_trained"))  # sft records its own
        tokens += recorded if recorded is not None else sum(r.get("train/trained_tokens", 0.0) for r in rows)
    return steps / len(seeds), tokens / len(seeds)


def _arm_row(
    layout: RunLayout, cfg: PivotRLConfig, name: str, slot: dict[str, Any], base: dict[str, list[float] | None]
) -> dict[str, Any]:
    e = cfg.eval
    row: dict[str, Any] = {"seeds": sorted(int(s) for s in slot["evals"])}
    for col, key in METRICS.items():
        scores = _mean_scores(slot["evals"], key)
        if scores is None:
            row[col], row[f"{col}_ci95"] = None, None
            continue
        row[col] = sum(scores) / len(scores)
        row[f"{col}_ci95"] = list(bootstrap_ci(scores, e.bootstrap_samples, e.seed))
        per_seed = [sum(v["scores"][key]) / len(v["scores"][key]) for v in slot["evals"].values()]
        row[f"{col}_per_seed"] = per_seed
        row[f"{col}_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        b = base.get(key)
        if b is not None and len(b) == len(scores):
            row[f"{col}_vs_baseline_ci95"] = list(paired_bootstrap_ci(b, scores, e.bootstrap_samples, e.seed))
    seeds = list(slot.get("seeds", {}).values())
    n = max(len(seeds), 1)
    row["optimizer_steps"], row["tokens_trained"] = _training_budget(layout, name, seeds)
    row["rollout_turns"] = sum(s.get("rollout_turns", 0.0) for s in seeds) / n
    row["profile_turns"] = sum(s.get("profile_turns", 0.0) for s in seeds) / n
    row["wall_seconds"] = sum(s.get("train_seconds", 0.0) for s in seeds) / n
    row["eval_seconds"] = sum(v.get("eval_seconds", 0.0) for v in slot["evals"].values()) / max(len(slot["evals"]), 1)
    return row


def _curve(layout: RunLayout, arm: str, seed: int) -> list[tuple[float, float]]:
    path = layout.root / "compare" / arm / f"seed{seed}" / "train" / "metrics.jsonl"
    if not path.exists():
        return []
    rows = read_metrics(path)
    return [(r["rollout/turns_cumulative"], r["val/turn_acc"]) for r in rows if "val/turn_acc" in r]


def turns_to_match(layout: RunLayout, cfg: PivotRLConfig, arms: dict[str, Any]) -> dict[str, Any]:
    """Rollout turns e2e needed to reach PivotRL's final validation accuracy, and the ratio."""
    out: dict[str, Any] = {"e2e_turns_to_match": None, "turn_ratio": None}
    if "pivotrl" not in arms or "e2e" not in arms:
        return out
    finals = [c[-1][1] for s in arms["pivotrl"]["seeds"] if (c := _curve(layout, "pivotrl", s))]
    e2e = _curve(layout, "e2e", arms["e2e"]["seeds"][0])
    if not finals or not e2e:
        out["note"] = "no validation curves (compare.val_every=0?)"
        return out
    target = sum(finals) / len(finals)
    pivot_turns = arms["pivotrl"]["rollout_turns"] + arms["pivotrl"]["profile_turns"]
    out.update(pivotrl_final_val_acc=target, pivotrl_turns_with_profiling=pivot_turns)
    if target <= 0:
        out["note"] = "PivotRL's final validation accuracy is 0: there is nothing for e2e to match"
        return out
    hit = next((t for t, acc in e2e if acc >= target), None)
    if hit is None:
        out["note"] = f"e2e did not reach {target:.4f} within {e2e[-1][0]:.0f} rollout turns"
        out["e2e_best_val_acc"] = max(acc for _, acc in e2e)
        return out
    out["e2e_turns_to_match"] = hit
    out["turn_ratio"] = hit / pivot_turns if pivot_turns else None
    out["turn_ratio_training_only"] = (
        hit / arms["pivotrl"]["rollout_turns"] if arms["pivotrl"]["rollout_turns"] else None
    )
    return out


def write_comparison(
    layout: RunLayout, cfg: PivotRLConfig, results: dict[str, Any], stage_secs: dict[str, float]
) -> dict[str, Any]:
    """Aggregate ``results`` (arm -> {"seeds", "evals"}) into the comparison files."""
    c = cfg.compare
    base_slot = results.get(c.baseline)
    base = {k: _mean_scores(base_slot["evals"], k) if base_slot else None for k in METRICS.values()}
    arms = {name: _arm_row(layout, cfg, name, slot, base) for name, slot in results.items()}
    diff: dict[str, Any] = {}
    if "pivotrl" in results and "sft" in results:
        for col, key in METRICS.items():
            a, b = _mean_scores(results["sft"]["evals"], key), _mean_scores(results["pivotrl"]["evals"], key)
            if a is not None and b is not None:
                ci = paired_bootstrap_ci(a, b, cfg.eval.bootstrap_samples, cfg.eval.seed)
                diff[col] = {"mean": sum(b) / len(b) - sum(a) / len(a), "ci95": list(ci)}
    out: dict[str, Any] = {
        "experiment": cfg.experiment,
        "baseline": c.baseline,
        "arms": arms,
        "pivotrl_minus_sft": diff,
        **turns_to_match(layout, cfg, arms),
        "base_stage_seconds": stage_secs,
        "n_items": {col: len(s) for col, key in METRICS.items() if (s := base.get(key)) is not None},
    }
    atomic_write_json(layout.root / "comparison.json", out)
    atomic_write_text(layout.root / "comparison.md", render_markdown(out))
    try:
        from pivotrl_nemo.pipeline.compare.plots import write_plots  # lazy: matplotlib

        write_plots(layout, out, results)
    except ImportError:  # matplotlib is a dependency; a broken install still gets the table
        pass
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _cell(row: dict[str, Any], col: str) -> str:
    v, ci = row.get(col), row.get(f"{col}_ci95")
    if v is None or ci is None:
        return "n/a"
    s = f"{_pct(v)} [{_pct(ci[0])}, {_pct(ci[1])}]"
    if len(row.get("seeds", [])) > 1:
        s += f" ±{_pct(row.get(f'{col}_std'))}"
    return s


def render_markdown(out: dict[str, Any]) -> str:
    """The comparison table (paper Table 1 / 4 shape) and the headline differences."""
    lines = [
        f"# PivotRL comparison: {out['experiment']}",
        "",
        "Accuracy in % on held-out data, [95% bootstrap interval over items]; ± is the standard deviation "
        "over training seeds. Rollout turns: assistant turns generated in training (profiling separately).",
        "",
        "| arm | seeds | turn-level | episode success | episode turns passed | out-of-domain | rollout turns | profiling turns | steps | tokens trained | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in out["arms"].items():
        cells = [_cell(row, c) for c in ("turn_acc", "episode_success", "episode_turns", "ood_acc")]
        lines.append(
            f"| {name} | {len(row['seeds'])} | " + " | ".join(cells)
            + f" | {row['rollout_turns']:.0f} | {row['profile_turns']:.0f} | {row['optimizer_steps']:.0f}"
            + f" | {row['tokens_trained']:.0f} | {row['wall_seconds']:.0f} |"
        )  # fmt: skip
    lines += ["", "## PivotRL minus SFT (paired over items, seed-averaged)", ""]
    for col, d in out["pivotrl_minus_sft"].items():
        lines.append(
            f"- {col}: {100 * d['mean']:+.1f} points, 95% interval [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
        )
    lines += ["", "## End-to-end RL: rollout turns to reach PivotRL's final validation accuracy", ""]
    if out.get("e2e_turns_to_match") is not None:
        lines.append(
            f"- e2e needed {out['e2e_turns_to_match']:.0f} turns; ratio to PivotRL (with profiling): {out['turn_ratio']:.2f}"
        )
    else:
        lines.append(f"- {out.get('note', 'not measured (needs the pivotrl and e2e arms)')}")
    return "\n".join(lines) + "\n"
