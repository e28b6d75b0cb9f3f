"""How often each verifier agrees with an official judge, on data this project installs.

    python bench/verifier_agreement.py                    # every BFCL single-turn item and multi-turn step
    python bench/verifier_agreement.py --smoke            # a sample, seconds (``make test`` runs it)
    python bench/verifier_agreement.py --out docs/results/verifier-agreement

Two judges, each the official one for its data:

- ``ast``: BFCL v4 single-turn items (questions, function docs and possible answers shipped by
  ``bfcl-eval``, read by ``domains/bfcl/single_turn.py``), judged by BFCL's own ``ast_checker``
  called in-process on the decoded calls;
- ``bfcl_state``: steps of BFCL v4 multi-turn trajectories (built on the real backends), judged by
  execution: the candidate and the expert call run on copies of the replayed backends and must
  leave the same state and return the same output.

Candidates are generic edits of each expected call (``bench/agreement_candidates.py``: variants
that look equivalent and near misses of many kinds), labelled only by the judge. Items are split
by id into a validation half and a test half: the one knob chosen here (the free-text metric and
threshold of ``tool_call_schema``) is swept on validation and every reported number is on test.
Reported per verifier and judge: Cohen's kappa (with a 95% bootstrap interval over items),
precision and recall of "pass" against the judge's pass, and the agreement per candidate kind.
Targets for ``tool_call_schema``: kappa >= 0.90 and precision >= 0.99 against every judge.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import itertools
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pivotrl_nemo.config.schema import FREE_TEXT_METRICS, SchemaVerifierConfig, VerifierConfig
from pivotrl_nemo.verifiers.registry import build_verifier

_spec = importlib.util.spec_from_file_location(
    "agreement_candidates", Path(__file__).with_name("agreement_candidates.py")
)
assert _spec is not None and _spec.loader is not None
ac = importlib.util.module_from_spec(_spec)
sys.modules["agreement_candidates"] = ac
_spec.loader.exec_module(ac)

TUNED = "tool_call_schema, judge= preset"
VERIFIERS = ("tool_call_schema", TUNED, "tool_call_args", "strict")
TARGET_KAPPA, TARGET_PRECISION = 0.90, 0.99
SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
TIE = 0.01
"""Kappa differences within this on validation are noise at this size: the simpler setting wins."""


@dataclass
class Labelled:
    """Candidates of one judge: per candidate its item, split, kind, the judge's label and each verifier's."""

    judge: str
    items: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, item: str, row: dict[str, Any], kind: str, completion: str, label: bool, split_key: str) -> None:
        self.items.append(item)
        self.splits.append(split_of(split_key))
        self.kinds.append(kind)
        self.labels.append(label)
        self.completions.append(completion)
        self.rows.append(row)


def split_of(key: str) -> str:
    """'val' or 'test', by a stable hash of ``key`` (half each): a single-turn item's question
    (BFCL repeats some questions under other ids; they go to one half), a multi-turn trajectory id."""
    return "val" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "test"


# ---------------------------------------------------------------------------------- candidates


def single_turn(max_items: int, seed: int) -> Labelled:
    from pivotrl_nemo.domains.bfcl.single_turn import ast_judge, item_row, load_items

    items = load_items()
    if max_items and len(items) > max_items:
        items = random.Random(seed).sample(items, max_items)
    out = Labelled("ast")
    rows = [item_row(item) for item in items]
    pool = [s for r in rows for s in ac.row_strings(r)]  # other rows' strings, for the string near misses
    for item, row in zip(items, rows):
        for cand in ac.candidates(row, random.Random(f"{seed}/{item.id}"), other_strings=pool):
            valid, _ = ast_judge(item, cand.calls)
            out.add(item.id, row, cand.kind, cand.completion, valid, json.dumps(item.messages, sort_keys=True))
    return out


def multi_turn(max_rows: int, seed: int) -> Labelled:
    from pivotrl_nemo.data.extract import extract_candidates
    from pivotrl_nemo.domains.bfcl.build import build_entry, load_category

    entries, answers = load_category("multi_turn_base")
    rows = []
    for entry in entries:
        traj = build_entry(entry, answers[entry["id"]], "multi_turn_base")
        if traj is not None:
            rows += [
                r for r in extract_candidates(traj, "test", "bfcl_state") if r["expected_action"]["type"] != "message"
            ]
    if max_rows and len(rows) > max_rows:
        rows = random.Random(seed).sample(rows, max_rows)
    judge = build_verifier("bfcl_state", VerifierConfig())
    out = Labelled("bfcl_state")
    pool = [s for r in rows for s in ac.row_strings(r)]
    for row in rows:
        for cand in ac.candidates(row, random.Random(f"{seed}/{row['id']}"), other_strings=pool):
            out.add(
                row["metadata"]["trajectory_id"],
                row,
                cand.kind,
                cand.completion,
                judge.verify(row, cand.completion).passed,
                row["metadata"]["trajectory_id"],
            )
    return out


# ---------------------------------------------------------------------------------- statistics


def kappa_pr(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float, float, float]:
    """Cohen's kappa, precision and recall of ``pred`` (pass) against ``gold``, and accuracy."""
    n = len(gold)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    tp = float(np.sum(pred & gold))
    po = float(np.mean(pred == gold))
    pe = float(np.mean(pred)) * float(np.mean(gold)) + float(np.mean(~pred)) * float(np.mean(~gold))
    kappa = (po - pe) / (1 - pe) if pe < 1 else 1.0
    precision = tp / float(np.sum(pred)) if pred.any() else float("nan")
    recall = tp / float(np.sum(gold)) if gold.any() else float("nan")
    return kappa, precision, recall, po


def bootstrap_ci(
    pred: np.ndarray, gold: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% intervals of kappa and of precision, resampling items (an item's candidates together:
    they are not independent)."""
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    kappas, precisions = [], []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        k, p, _, _ = kappa_pr(pred[idx], gold[idx])
        kappas.append(k)
        precisions.append(p)
    k_lo, k_hi = np.nanpercentile(kappas, [2.5, 97.5])
    p_lo, p_hi = np.nanpercentile(precisions, [2.5, 97.5])
    return (float(k_lo), float(k_hi)), (float(p_lo), float(p_hi))


def verdicts(data: Labelled, cfg: VerifierConfig, mask: np.ndarray) -> np.ndarray:
    verifier = build_verifier(cfg.name, cfg)
    return np.array([verifier.verify(data.rows[i], data.completions[i]).passed for i in np.flatnonzero(mask)], bool)


# ---------------------------------------------------------------------------------- the run


def _val_scores(data: Labelled, rules: SchemaVerifierConfig) -> dict[str, float]:
    mask = np.array(data.splits) == "val"
    cfg = VerifierConfig(name="tool_call_schema", schema=rules)
    k, p, r, _ = kappa_pr(verdicts(data, cfg, mask), np.array(data.labels, bool)[mask])
    return {"kappa": k, "precision": p, "recall": r}


def sweep(datasets: list[Labelled]) -> tuple[SchemaVerifierConfig, list[dict[str, Any]]]:
    """One free-text metric and threshold for every judge, at the default knobs: among settings
    whose precision meets the target against every judge on validation, the strictest whose
    worst-judge kappa is within ``TIE`` of the best."""
    table: list[dict[str, Any]] = []
    for metric in FREE_TEXT_METRICS:
        for threshold in SWEEP_THRESHOLDS:
            rules = SchemaVerifierConfig(free_text_metric=metric, free_text_threshold=threshold)
            entry: dict[str, Any] = {"metric": metric, "threshold": threshold, "rules": rules}
            entry.update({d.judge: _val_scores(d, rules) for d in datasets})
            table.append(entry)

    def worst(e: dict[str, Any], key: str) -> float:
        return min(e[d.judge][key] for d in datasets)

    ok = [e for e in table if worst(e, "precision") >= TARGET_PRECISION] or table
    best = max(worst(e, "kappa") for e in ok)
    near = [e for e in ok if worst(e, "kappa") >= best - TIE]
    chosen = max(near, key=lambda e: (e["threshold"], e["metric"] == "token_edit"))  # strictest, then the default
    return chosen["rules"], [{k: v for k, v in e.items() if k != "rules"} for e in table]


GRID: dict[str, tuple[Any, ...]] = {
    "string_normalisation": ("exact", "case_space_punct"),
    "exact_identifiers": (True, False),
    "exact_enums": (True, False),
    "recognise_datetimes": (False, True),
    "integral_floats": (False, True),
}
"""The judge-semantics knobs swept on validation (20 distinct settings): what a judge normalises or accepts."""


def knob_grid(base: SchemaVerifierConfig) -> dict[str, SchemaVerifierConfig]:
    """Every setting of ``GRID`` on top of ``base``, named by its non-default knobs."""
    default = SchemaVerifierConfig()
    out: dict[str, SchemaVerifierConfig] = {}
    for values in itertools.product(*GRID.values()):
        knobs = dict(zip(GRID, values))
        if knobs["string_normalisation"] == "exact" and not (knobs["exact_identifiers"] and knobs["exact_enums"]):
            continue  # exact strings make the identifier and enum rules moot: the same verdicts
        rules = dataclasses.replace(base, **knobs)
        name = ", ".join(f"{k}={v}" for k, v in knobs.items() if getattr(default, k) != v) or "defaults"
        out[name] = rules
    return out


def choose(scores: dict[str, dict[str, dict[str, float]]], judges: list[str]) -> str:
    """The simplest grid setting (fewest knobs off their defaults) whose worst-judge kappa is within
    ``TIE`` of the best, among those whose precision meets the target against every one of
    ``judges`` (validation halves); else the most precise."""

    def worst(name: str, key: str) -> float:
        return min(scores[name][j][key] for j in judges)

    ok = [n for n in scores if worst(n, "precision") >= TARGET_PRECISION]
    if not ok:
        return max(scores, key=lambda n: worst(n, "precision"))
    best = max(worst(n, "kappa") for n in ok)
    near = [n for n in ok if worst(n, "kappa") >= best - TIE]
    return min(near, key=lambda n: (0 if n == "defaults" else n.count("=") + 1, -worst(n, "kappa")))


def shipped_presets() -> dict[str, SchemaVerifierConfig]:
    """``conf/judge/<name>.yaml`` as configs (their ``verifier.schema`` block over the defaults)."""
    from omegaconf import OmegaConf

    out = {}
    for path in sorted((Path(__file__).parents[1] / "conf" / "judge").glob("*.yaml")):
        block = OmegaConf.to_container(OmegaConf.load(path))["verifier"]["schema"]  # type: ignore[index]
        out[path.stem] = dataclasses.replace(SchemaVerifierConfig(), **block)
    return out


PRESET_OF_JUDGE = {"ast": "ast", "bfcl_state": "execution"}
"""The ``judge=`` preset meant for each judge of this benchmark."""


def evaluate(data: Labelled, configs: dict[str, VerifierConfig], n_boot: int, seed: int) -> dict[str, Any]:
    mask = np.array(data.splits) == "test"
    gold = np.array(data.labels, bool)[mask]
    kinds = np.array(data.kinds)[mask]
    groups = np.array(data.items)[mask]
    result: dict[str, Any] = {"n": int(mask.sum()), "items": len(set(groups)), "judge_pass_rate": float(gold.mean())}
    per_kind: dict[str, dict[str, Any]] = {
        k: {"n": int((kinds == k).sum()), "judge_pass": float(gold[kinds == k].mean())} for k in sorted(set(kinds))
    }
    for name, cfg in configs.items():
        pred = verdicts(data, cfg, mask)
        k, p, r, acc = kappa_pr(pred, gold)
        (lo, hi), (p_lo, p_hi) = bootstrap_ci(pred, gold, groups, n_boot, seed)
        result[name] = {"kappa": k, "kappa_ci95": [lo, hi], "precision": p, "precision_ci95": [p_lo, p_hi]}
        result[name].update(recall=r, accuracy=acc)
        result[name]["false_pass"] = int(np.sum(pred & ~gold))
        result[name]["false_fail"] = int(np.sum(~pred & gold))
        for kind, entry in per_kind.items():
            entry[name] = float(np.mean(pred[kinds == kind] == gold[kinds == kind]))
    result["per_kind"] = per_kind
    return result


def _row(judge: str, res: dict[str, Any], name: str) -> str:
    m = res[name]
    k, p = m["kappa_ci95"], m["precision_ci95"]
    return (
        f"| {judge} | {res['n']} ({res['items']}) | `{name}` | {m['kappa']:.3f} [{k[0]:.3f}, {k[1]:.3f}] | "
        f"{m['precision']:.3f} [{p[0]:.3f}, {p[1]:.3f}] | {m['recall']:.3f} | {m['false_pass']} | {m['false_fail']} |"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['date']} on {report['machine']}: `{report['command']}` ({report['seconds']:.0f} s).",
        "",
        "| judge | candidates (items) | verifier | kappa [95% CI] | precision [95% CI] | recall | false passes | false fails |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for judge, res in report["judges"].items():
        lines += [_row(judge, res, name) for name in report["verifiers"]]
    lines += ["", f"Targets (kappa >= {TARGET_KAPPA}, precision >= {TARGET_PRECISION}): {report['targets']}", ""]
    lines += [f"Chosen on the validation halves (the knobs of `GRID`, {len(report['grid'])} settings):", ""]
    for judge, e in report["chosen_per_judge"].items():
        same = "equals" if e["matches_preset"] else "DIFFERS FROM"
        lines.append(f"- against `{judge}`: {e['setting']} ({same} `judge={e['preset']}`)")
    safe = report["safe"]
    lines.append(
        f"- against every judge (the defaults): {safe['setting']} ({'equals' if safe['matches_defaults'] else 'DIFFERS FROM'} "
        "the built-in defaults)"
    )
    lines += ["", "Agreement with the judge per candidate kind (test half; judge pass = share the judge accepts):", ""]
    header = "| judge | kind | n | judge pass | " + " | ".join(f"`{v}`" for v in report["verifiers"]) + " |"
    lines += [header, "|" + "---|" * (4 + len(report["verifiers"]))]
    for judge, res in report["judges"].items():
        for kind, e in res["per_kind"].items():
            cells = " | ".join(f"{e[v]:.2f}" for v in report["verifiers"])
            lines.append(f"| {judge} | {kind} | {e['n']} | {e['judge_pass']:.2f} | {cells} |")
    judges = list(report["judges"])
    lines += ["", "Free-text sweep of `tool_call_schema` at the defaults (validation halves):", ""]
    lines += ["| metric | threshold | " + " | ".join(f"{j} kappa / precision" for j in judges) + " |"]
    lines += ["|" + "---|" * (2 + len(judges))]
    for e in report["sweep"]:
        cells = " | ".join(f"{e[j]['kappa']:.3f} / {e[j]['precision']:.3f}" for j in judges)
        lines.append(f"| {e['metric']} | {e['threshold']} | {cells} |")
    lines += ["", f"Chosen: {report['chosen_free_text']}.", ""]
    lines += ["Knob grid (validation halves; kappa / precision):", ""]
    lines += ["| setting | " + " | ".join(judges) + " |", "|" + "---|" * (1 + len(judges))]
    for name, per in report["grid"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{per[j]['kappa']:.3f} / {per[j]['precision']:.3f}" for j in judges) + " |"
        )
    return "\n".join(lines) + "\n"


def run(single_items: int, multi_rows: int, seed: int = 0, n_boot: int = 200, command: str = "") -> dict[str, Any]:
    """The benchmark as a dict (``markdown`` renders it)."""
    started = time.perf_counter()
    datasets = [single_turn(single_items, seed), multi_turn(multi_rows, seed)]
    judges = [d.judge for d in datasets]
    free_text, table = sweep(datasets)
    grid = knob_grid(free_text)
    scores = {name: {d.judge: _val_scores(d, rules) for d in datasets} for name, rules in grid.items()}
    presets = shipped_presets()
    chosen_per_judge, tuned = {}, {}
    for judge in judges:
        name = choose(scores, [judge])
        tuned[judge] = grid[name]
        preset = PRESET_OF_JUDGE[judge]
        chosen_per_judge[judge] = {"setting": name, "preset": preset, "matches_preset": grid[name] == presets[preset]}
    safe_name = choose(scores, judges)
    safe = {"setting": safe_name, "matches_defaults": grid[safe_name] == SchemaVerifierConfig()}
    results = {}
    for d in datasets:
        configs = {
            "tool_call_schema": VerifierConfig(name="tool_call_schema"),
            TUNED: VerifierConfig(name="tool_call_schema", schema=presets[PRESET_OF_JUDGE[d.judge]]),
            "tool_call_args": VerifierConfig(name="tool_call_args"),
            "strict": VerifierConfig(name="strict"),
        }
        results[d.judge] = evaluate(d, configs, n_boot, seed)

    def meets(name: str) -> bool:
        return all(
            r[name]["kappa"] >= TARGET_KAPPA and r[name]["precision"] >= TARGET_PRECISION for r in results.values()
        )

    met, met_default = meets(TUNED), meets("tool_call_schema")
    default = SchemaVerifierConfig()
    return {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPU cores), Python {platform.python_version()}",
        "command": command,
        "seconds": time.perf_counter() - started,
        "verifiers": list(VERIFIERS),
        "judges": results,
        "sweep": table,
        "chosen_free_text": f"free_text_metric={free_text.free_text_metric}, free_text_threshold={free_text.free_text_threshold}"
        + (
            " (the default)"
            if (free_text.free_text_metric, free_text.free_text_threshold)
            == (default.free_text_metric, default.free_text_threshold)
            else " (NOT the default)"
        ),
        "grid": scores,
        "chosen_per_judge": chosen_per_judge,
        "safe": safe,
        "targets": f"{'met' if met else 'NOT met'} by `tool_call_schema` with each judge's `judge=` preset; "
        f"{'met' if met_default else 'not met'} by its defaults against every judge",
        "targets_met": met,
        "targets_met_default": met_default,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a sample: 200 single-turn items, 60 multi-turn steps")
    ap.add_argument("--single-items", type=int, default=0, help="BFCL single-turn items (0: all)")
    ap.add_argument("--multi-rows", type=int, default=0, help="BFCL multi-turn steps (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the kappa interval")
    ap.add_argument("--out", help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    single, multi = (200, 60) if args.smoke else (args.single_items, args.multi_rows)
    command = "python bench/verifier_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run(single, multi, args.seed, args.bootstrap, command.strip())
    text = markdown(report)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
        Path(args.out + ".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
