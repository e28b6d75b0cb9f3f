"""The comparison's plots (matplotlib, headless): ``plots/compare_*.png`` under ``run_dir``.

- ``compare_acc_vs_turns.png``: validation turn-level accuracy against cumulative rollout turns
  for every PivotRL seed (shifted right by the profiling turns) and for e2e;
- ``compare_reward_variance.png``: mean within-group reward variance per training step for
  pivots and for random turns (the paper's Figure 3: pivots keep the learning signal);
- ``compare_ood.png``: out-of-domain accuracy of pi_0 and of every arm.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

from pivotrl_nemo.pipeline.compare.table import _curve  # noqa: E402
from pivotrl_nemo.pipeline.layout import RunLayout  # noqa: E402
from pivotrl_nemo.utils.metrics import read_metrics  # noqa: E402


def write_plots(layout: RunLayout, out: dict[str, Any], results: dict[str, Any]) -> None:
    layout.plots.mkdir(parents=True, exist_ok=True)
    arms = out["arms"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ("pivotrl", "e2e"):
        if arm not in arms:
            continue
        shift = arms[arm]["profile_turns"]
        for s in arms[arm]["seeds"]:
            pts = _curve(layout, arm, s)
            if pts:
                ax.plot([t + shift for t, _ in pts], [a for _, a in pts], marker=".", label=f"{arm} seed {s}")
    ax.set_xlabel("cumulative rollout turns (PivotRL: profiling included)")
    ax.set_ylabel("validation turn-level accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(layout.plots / "compare_acc_vs_turns.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ("pivotrl", "pivotrl_random_turns"):
        if arm not in arms:
            continue
        s = arms[arm]["seeds"][0]
        path = layout.root / "compare" / arm / f"seed{s}" / "train" / "metrics.jsonl"
        if path.exists():
            rows = [r for r in read_metrics(path) if "train/reward_group_variance" in r]
            ax.plot([r["step"] for r in rows], [r["train/reward_group_variance"] for r in rows], label=arm)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean within-group reward variance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(layout.plots / "compare_reward_variance.png", dpi=120)
    plt.close(fig)

    names = [n for n, r in arms.items() if r.get("ood_acc") is not None]
    if names:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar(names, [arms[n]["ood_acc"] for n in names])
        ax.set_ylabel("out-of-domain accuracy")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(layout.plots / "compare_ood.png", dpi=120)
        plt.close(fig)
