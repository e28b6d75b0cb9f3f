"""The experiment report: report.json (machine-readable) and report.md with plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pivotrl_nemo.config import PivotRLConfig
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pivotrl_nemo.utils.metrics import read_metrics


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plt():
    import matplotlib  # lazy: a second of start-up that only plotting stages pay

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pass_rate_histogram(means: list[float], lambda_diff: float, k: int, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [(i - 0.5) / k for i in range(k + 2)]
    ax.hist(means, bins=bins, color="#4c72b0", edgecolor="white")
    ax.axvline(lambda_diff, color="#c44e52", ls="--", label=f"lambda_diff = {lambda_diff}")
    ax.axvspan(-0.5 / k, 0.5 / k, color="grey", alpha=0.15, label="zero variance (dropped)")
    ax.axvspan(1 - 0.5 / k, 1 + 0.5 / k, color="grey", alpha=0.15)
    ax.set_xlabel(f"pi_0 pass rate over K={k} samples")
    ax.set_ylabel("candidates")
    ax.set_title("Profiled candidates; pivots lie strictly between 0 and lambda_diff")
    ax.legend(fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def plot_reward_curve(rows: list[dict], path: Path) -> None:
    plt = _plt()
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rew = [r["train/reward_mean"] for r in rows]
    ax.plot(steps, rew, color="#4c72b0", alpha=0.4, label="batch reward")
    w = 5
    if len(rew) >= w:
        smooth = [sum(rew[i - w + 1 : i + 1]) / w for i in range(w - 1, len(rew))]
        ax.plot(steps[w - 1 :], smooth, color="#4c72b0", label=f"{w}-step mean")
    zv = [r["train/zero_variance_groups"] for r in rows]
    ax.plot(steps, zv, color="#dd8452", alpha=0.7, label="zero-variance groups")
    ax.set_xlabel("optimizer step")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("PivotRL training on pivots")
    ax.legend(fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def plot_accuracy(res: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    vals = [res["pi0_accuracy"], res["pivotrl_accuracy"]]
    ax.bar(["pi_0 (SFT)", "PivotRL"], vals, color=["#8c8c8c", "#55a868"])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01, f"{100 * v:.1f}%", ha="center")
    lo, hi = res["delta_ci95"]
    ax.set_title(
        f"held-out turn accuracy (n={res['n_eval']})\ndelta 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] pts", fontsize=9
    )
    ax.set_ylim(0, min(1.0, max(vals) + 0.15))
    _save_fig(fig, path)
    plt.close(fig)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_report(cfg: PivotRLConfig, layout: RunLayout, stage_seconds: dict[str, float]) -> dict:
    """Write report.json and report.md (with plots) from the run's outputs; returns report.json."""
    res = _read(layout.eval_results)
    filt = _read(layout.filter_summary)
    markers = {p.stem: _read(p) for p in layout.markers.glob("*.json")}
    train_rows = read_metrics(layout.train_dir / "metrics.jsonl")
    plots = layout.plots
    if train_rows:
        plot_reward_curve(train_rows, plots / "reward_curve.png")
    if res:
        plot_accuracy(res, plots / "accuracy.png")
    stage_seconds = {k: v for k, v in stage_seconds.items() if k != "report"}
    ext = markers.get("extract", {}).get("summary", {})
    rep = {
        "experiment": cfg.experiment,
        "pi0_accuracy": res.get("pi0_accuracy"),
        "pivotrl_accuracy": res.get("pivotrl_accuracy"),
        "delta": res.get("delta"),
        "delta_ci95": res.get("delta_ci95"),
        "n_eval": res.get("n_eval"),
        "eval_samples_per_candidate": res.get("samples_per_candidate"),
        "eval_temperature": res.get("temperature"),
        "n_candidates": filt.get("candidates"),
        "n_candidates_by_split": {s: v["candidates"] for s, v in ext.items()},
        "n_pivots": filt.get("pivots"),
        "kept_fraction": filt.get("kept_fraction"),
        "zero_variance_fraction": filt.get("zero_variance_fraction"),
        "train_reward_first5": _mean([r["train/reward_mean"] for r in train_rows[:5]]),
        "train_reward_last5": _mean([r["train/reward_mean"] for r in train_rows[-5:]]),
        "wall_seconds": round(sum(stage_seconds.values()), 1),
        "stages": stage_seconds,
    }
    atomic_write_json(layout.report_json, rep)
    atomic_write_text(layout.report_md, _markdown(cfg, rep, filt, markers))
    return rep


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _markdown(cfg, rep: dict, filt: dict, markers: dict) -> str:
    lo, hi = rep["delta_ci95"] or (None, None)
    verdict = "n/a"
    if lo is not None:
        verdict = "**improvement (interval above 0)**" if lo > 0 else "no significant improvement (interval includes 0)"
    build = markers.get("build", {}).get("summary", {})
    sft = markers.get("sft", {}).get("summary", {})
    lines = [
        f"# PivotRL report: {rep['experiment']}",
        "",
        "## Result",
        "",
        "| policy | held-out turn accuracy |",
        "|---|---:|",
        f"| pi_0 (SFT, the profiling reference) | {_pct(rep['pi0_accuracy'])} |",
        f"| PivotRL | {_pct(rep['pivotrl_accuracy'])} |",
        "",
        f"Difference: {_pts(rep['delta'])} points, paired bootstrap 95% interval "
        f"[{_pts(lo)}, {_pts(hi)}] over {rep['n_eval']} held-out candidates "
        f"({rep['eval_samples_per_candidate']} samples each at temperature {rep['eval_temperature']}): {verdict}.",
        "",
        "![accuracy](plots/accuracy.png)",
        "",
        "## Data",
        "",
        f"- trajectories: {build.get('trajectories')} ({build.get('tool_calls')} expert tool calls), split by "
        f"trajectory id: {build.get('by_split')}",
        f"- candidates per split: {rep['n_candidates_by_split']}",
        _pi0_line(sft),
        "",
        "## Profiling and the pivot filter",
        "",
        f"- rule: {filt.get('rule')}; K = {markers.get('profile', {}).get('summary', {}).get('k')}",
        f"- {rep['n_candidates']} RL candidates, {rep['n_pivots']} pivots kept ({_pct(rep['kept_fraction'])}); "
        f"zero-variance (dropped, no learning signal): {_pct(rep['zero_variance_fraction'])}",
        f"- dropped by reason: {filt.get('dropped')}",
        f"- by action type: {filt.get('by_action_type')}",
        "",
        "![pass-rate histogram](plots/pass_rate_hist.png)",
        "",
        "## Training",
        "",
        f"- {cfg.algorithm.steps} GRPO steps x {cfg.algorithm.prompts_per_step} pivots x {cfg.algorithm.group_size} "
        f"actions; advantage {cfg.algorithm.advantage}; clip {cfg.algorithm.clip_low}/{cfg.algorithm.clip_high}; "
        f"KL {cfg.algorithm.kl_coef}; lr {cfg.algorithm.optim.lr}",
        f"- batch reward: first 5 steps {_fmt(rep['train_reward_first5'])}, last 5 steps {_fmt(rep['train_reward_last5'])}",
        "- per-step metrics: `train/metrics.jsonl` and TensorBoard (`tensorboard --logdir "
        f"{RunLayout.of(cfg.run_dir).train_dir / 'tensorboard'}`)",
        "",
        "![reward curve](plots/reward_curve.png)",
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in rep["stages"].items()],
        f"| **total** | **{rep['wall_seconds']:.1f}** |",
        "",
    ]
    return "\n".join(lines)


def _pts(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pi0_line(sft: dict) -> str:
    """How pi_0 was made: SFT (from scratch or from an initial checkpoint), or the checkpoint as is."""
    init = sft.get("init_checkpoint")
    if init and not sft.get("examples"):
        return f"- pi_0: the initial checkpoint {init} as it is (sft.steps=0)"
    start = f" from {init}" if init else ""
    return (
        f"- pi_0: SFT{start} on the 'sft' split, {sft.get('examples')} turns; final loss {_fmt(sft.get('final_loss'))}, "
        f"held-out action NLL per token {_fmt(sft.get('heldout_action_nll'))}"
    )
