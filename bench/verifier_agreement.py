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

TUNED = "tool_call_schema, judge= preset chosen on validation"
VERIFIERS = ("tool_call_schema", TUNED, "tool_call_args", "strict")
TARGET_KAPPA, TARGET_PRECISION = 0.90, 0.99
SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


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

    def add(self, item: str, row: dict[str, Any], kind: str, completion: str, label: bool) -> None:
        self.items.append(item)
        self.splits.append(split_of(item))
        self.kinds.append(kind)
        self.labels.append(label)
        self.completions.append(completion)
        self.rows.append(row)


def split_of(item_id: str) -> str:
    """'val' or 'test', by a stable hash of the item id (half each)."""
    return "val" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "test"


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
            out.add(item.id, row, cand.kind, cand.completion, valid)
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


def bootstrap_kappa(
    pred: np.ndarray, gold: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
) -> tuple[float, float]:
    """95% interval of kappa, resampling items (all candidates of an item together)."""
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        stats.append(kappa_pr(pred[idx], gold[idx])[0])
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def verdicts(data: Labelled, cfg: VerifierConfig, mask: np.ndarray) -> np.ndarray:
    verifier = build_verifier(cfg.name, cfg)
    return np.array([verifier.verify(data.rows[i], data.completions[i]).passed for i in np.flatnonzero(mask)], bool)


# ---------------------------------------------------------------------------------- the run


def _val_scores(data: Labelled, rules: SchemaVerifierConfig) -> dict[str, float]:
    mask = np.array(data.splits) == "val"
    cfg = VerifierConfig(name="tool_call_schema", schema=rules)
    k, p, r, _ = kappa_pr(verdicts(data, cfg, mask), np.array(data.labels, bool)[mask])
    return {"kappa": k, "precision": p, "recall": r}


def _better(a: dict[str, float], b: dict[str, float] | None) -> bool:
    """Higher kappa among configs meeting the precision target; else higher precision."""
    if b is None:
        return True
    a_ok, b_ok = a["precision"] >= TARGET_PRECISION, b["precision"] >= TARGET_PRECISION
    if a_ok != b_ok:
        return a_ok
    return a["kappa"] > b["kappa"] if a_ok else a["precision"] > b["precision"]


def sweep(datasets: list[Labelled]) -> tuple[SchemaVerifierConfig, list[dict[str, Any]]]:
    """One free-text metric and threshold for every judge: the best worst-judge kappa on
    validation among those with precision >= the target against every judge (ties: the stricter)."""
    table, best, best_key = [], SchemaVerifierConfig(), (-1.0, 0.0)
    for metric in FREE_TEXT_METRICS:
        for threshold in SWEEP_THRESHOLDS:
            rules = SchemaVerifierConfig(free_text_metric=metric, free_text_threshold=threshold)
            entry: dict[str, Any] = {"metric": metric, "threshold": threshold}
            entry.update({d.judge: _val_scores(d, rules) for d in datasets})
            worst_k = min(entry[d.judge]["kappa"] for d in datasets)
            ok = all(entry[d.judge]["precision"] >= TARGET_PRECISION for d in datasets)
            key = (worst_k if ok else -1.0, threshold)
            if key > best_key:
                best, best_key = rules, key
            table.append(entry)
    return best, table


def judge_presets() -> dict[str, dict[str, Any]]:
    """``verifier.schema`` overrides of each ``conf/judge/*.yaml`` preset, plus ``default`` (none)."""
    from omegaconf import OmegaConf

    presets: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted((Path(__file__).parents[1] / "conf" / "judge").glob("*.yaml")):
        presets[path.stem] = OmegaConf.to_container(OmegaConf.load(path))["verifier"]["schema"]  # type: ignore[index]
    return presets


def preset_per_judge(
    data: Labelled, base: SchemaVerifierConfig
) -> tuple[str, SchemaVerifierConfig, list[dict[str, Any]]]:
    """The ``judge=`` preset for one judge, chosen on its validation half: judges disagree on
    strings (BFCL's AST checker normalises them, execution does not), so the string rules are
    what a user sets for the judge their task is scored by."""
    table: list[dict[str, Any]] = []
    best_name, best, best_scores = "default", base, None
    distinct: dict[str, SchemaVerifierConfig] = {}  # presets equal to the defaults are one column
    for name, overrides in judge_presets().items():
        rules = dataclasses.replace(base, **overrides)
        same = next((n for n, r in distinct.items() if r == rules), None)
        if same is not None:
            distinct[f"{same} = {name}"] = distinct.pop(same)
        else:
            distinct[name] = rules
    for name, rules in distinct.items():
        scores = _val_scores(data, rules)
        table.append({"preset": name, **scores})
        if _better(scores, best_scores):
            best_name, best, best_scores = name, rules, scores
    return best_name, best, table


def safe_preset(per_judge: dict[str, dict[str, Any]]) -> str:
    """The preset a verifier that does not know its judge should use: the best worst-judge kappa
    among presets whose precision meets the target against every judge (validation halves)."""
    names = [e["preset"] for e in next(iter(per_judge.values()))["sweep"]]
    scores = {n: [next(e for e in j["sweep"] if e["preset"] == n) for j in per_judge.values()] for n in names}
    safe = [n for n in names if all(e["precision"] >= TARGET_PRECISION for e in scores[n])]
    pool = safe or names
    return max(pool, key=lambda n: min(e["kappa"] for e in scores[n]))


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
        lo, hi = bootstrap_kappa(pred, gold, groups, n_boot, seed)
        result[name] = {"kappa": k, "kappa_ci95": [lo, hi], "precision": p, "recall": r, "accuracy": acc}
        result[name]["false_pass"] = int(np.sum(pred & ~gold))
        result[name]["false_fail"] = int(np.sum(~pred & gold))
        for kind, entry in per_kind.items():
            entry[name] = float(np.mean(pred[kinds == kind] == gold[kinds == kind]))
    result["per_kind"] = per_kind
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['date']} on {report['machine']}: `{report['command']}` ({report['seconds']:.0f} s).",
        "",
        "| judge | candidates (items) | verifier | kappa [95% CI] | precision | recall | false passes | false fails |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for judge, res in report["judges"].items():
        for name in report["verifiers"]:
            m = res[name]
            lines.append(
                f"| {judge} | {res['n']} ({res['items']}) | `{name}` | {m['kappa']:.3f} [{m['kappa_ci95'][0]:.3f}, "
                f"{m['kappa_ci95'][1]:.3f}] | {m['precision']:.3f} | {m['recall']:.3f} | {m['false_pass']} | {m['false_fail']} |"
            )
    lines += ["", "Targets for `tool_call_schema` (kappa >= 0.90, precision >= 0.99): " + report["targets"], ""]
    lines += ["Agreement with the judge per candidate kind (test half; judge pass = share the judge accepts):", ""]
    header = "| judge | kind | n | judge pass | " + " | ".join(f"`{v}`" for v in report["verifiers"]) + " |"
    lines += [header, "|" + "---|" * (4 + len(report["verifiers"]))]
    for judge, res in report["judges"].items():
        for kind, e in res["per_kind"].items():
            cells = " | ".join(f"{e[v]:.2f}" for v in report["verifiers"])
            lines.append(f"| {judge} | {kind} | {e['n']} | {e['judge_pass']:.2f} | {cells} |")
    lines += ["", "Free-text sweep of `tool_call_schema` (validation half):", ""]
    judges = list(report["judges"])
    lines += ["| metric | threshold | " + " | ".join(f"{j} kappa / precision" for j in judges) + " |"]
    lines += ["|" + "---|" * (2 + len(judges))]
    for e in report["sweep"]:
        cells = " | ".join(f"{e[j]['kappa']:.3f} / {e[j]['precision']:.3f}" for j in judges)
        lines.append(f"| {e['metric']} | {e['threshold']} | {cells} |")
    lines += ["", f"Chosen on validation: {report['chosen']}.", ""]
    lines += ["`judge=` preset (`conf/judge/`) per judge (validation half; kappa / precision):", ""]
    names = [e["preset"] for e in next(iter(report["preset_per_judge"].values()))["sweep"]]
    lines += ["| judge | " + " | ".join(names) + " | chosen |", "|" + "---|" * (len(names) + 2)]
    for judge, e in report["preset_per_judge"].items():
        cells = " | ".join(f"{x['kappa']:.3f} / {x['precision']:.3f}" for x in e["sweep"])
        lines.append(f"| {judge} | {cells} | {e['preset']} |")
    lines += [
        "",
        f"Safe against every judge (precision >= {TARGET_PRECISION} on both validation halves, best worst-judge kappa): `{report['safe_preset']}`.",
    ]
    return "\n".join(lines) + "\n"


def run(single_items: int, multi_rows: int, seed: int = 0, n_boot: int = 200, command: str = "") -> dict[str, Any]:
    """The benchmark as a dict (``markdown`` renders it)."""
    started = time.perf_counter()
    datasets = [single_turn(single_items, seed), multi_turn(multi_rows, seed)]
    chosen, table = sweep(datasets)
    judges, per_judge = {}, {}
    for d in datasets:
        preset, tuned, presets = preset_per_judge(d, chosen)
        per_judge[d.judge] = {"preset": preset, "sweep": presets}
        configs = {
            "tool_call_schema": VerifierConfig(name="tool_call_schema"),
            TUNED: VerifierConfig(name="tool_call_schema", schema=tuned),
            "tool_call_args": VerifierConfig(name="tool_call_args"),
            "strict": VerifierConfig(name="strict"),
        }
        judges[d.judge] = evaluate(d, configs, n_boot, seed)

    def meets(name: str) -> bool:
        return all(
            r[name]["kappa"] >= TARGET_KAPPA and r[name]["precision"] >= TARGET_PRECISION for r in judges.values()
        )

    met, met_default = meets(TUNED), meets("tool_call_schema")
    safe = safe_preset(per_judge)
    default = SchemaVerifierConfig()
    return {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPU cores), Python {platform.python_version()}",
        "command": command,
        "seconds": time.perf_counter() - started,
        "verifiers": list(VERIFIERS),
        "judges": judges,
        "sweep": table,
        "chosen": f"free_text_metric={chosen.free_text_metric}, free_text_threshold={chosen.free_text_threshold}"
        + (
            " (the default)"
            if (chosen.free_text_metric, chosen.free_text_threshold)
            == (default.free_text_metric, default.free_text_threshold)
            else " (NOT the default)"
        ),
        "preset_per_judge": per_judge,
        "safe_preset": safe,
        "targets": f"{'met' if met else 'NOT met'} with the judge= preset chosen per judge on validation; "
        f"{'met' if met_default else 'not met'} by the default config against every judge",
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
