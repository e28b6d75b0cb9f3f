"""What each stage does. Each function takes (cfg, run_dir), writes atomically, returns a summary.

Outputs under run_dir:
  data/trajectories.jsonl, data/splits.json      build
  sft/checkpoint/step_<N>, sft/metrics.jsonl     sft      (pi_0; megatron dist checkpoints)
  candidates/<split>.jsonl                       extract
  profile/profile_log.jsonl, profile/profiled.jsonl   profile
  pivots.jsonl, filter_summary.json, plots/pass_rate_hist.png   filter
  train/checkpoint/{latest,step_<N>}, train/metrics.jsonl   train
  eval/results.json                              eval
  report.md, report.json, plots/*.png            report
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .config import PivotRLConfig
from .data.extract import extract_candidates, split_ids
from .data.pivots import load_pivot_rows
from .utils.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from .utils.logging import get_logger
from .utils.metrics import MetricsWriter

log = get_logger(__name__)
_RUNTIME = {}


def runtime(cfg: PivotRLConfig):
    from .runtime import Runtime

    key = id(cfg)
    if key not in _RUNTIME:
        _RUNTIME.clear()
        _RUNTIME[key] = Runtime(cfg)
    return _RUNTIME[key]


def build(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """Expert trajectories (BFCL executed on its real backends, or a validated JSONL) + splits."""
    d = cfg.data
    skipped = 0
    if d.source == "bfcl":
        from .domains.bfcl.build import build_bfcl_trajectories

        trajs = build_bfcl_trajectories(d.bfcl_categories, d.max_trajectories)
    else:
        from .data.trajectory import load_trajectories

        trajs, rep = load_trajectories(d.path, d.skip_invalid)
        skipped = rep.skipped
        if d.max_trajectories:
            trajs = trajs[: d.max_trajectories]
    assignment = split_ids([t["id"] for t in trajs], d.split_fractions, d.split_seed)
    atomic_write_jsonl(run_dir / "data" / "trajectories.jsonl", trajs)
    atomic_write_json(run_dir / "data" / "splits.json", assignment)
    if cfg.model.tokenizer_vocab_size > 0:
        _train_domain_tokenizer(cfg, run_dir)
    n_calls = sum(len(m.get("tool_calls") or []) for t in trajs for m in t["messages"] if m["role"] == "assistant")
    return {"trajectories": len(trajs), "tool_calls": n_calls, "skipped_invalid": skipped,
            "by_split": dict(Counter(assignment.values()))}


def _train_domain_tokenizer(cfg: PivotRLConfig, run_dir: Path) -> None:
    """A BPE of model.tokenizer_vocab_size tokens trained on the sft and rl splits' rendered
    prompts and actions (never the test split), from the base tokenizer's pipeline."""
    import shutil

    from .rollout.chat import render_messages
    from .data.tokenizer import load_tokenizer
    from .data.actions import action_from_expected, render_action

    base = load_tokenizer(cfg.model.tokenizer)
    cands = _candidates_of(cfg, run_dir)
    texts = []
    for split in ("sft", "rl"):
        for r in cands.get(split, []):
            msgs = render_messages(r, cfg.data, base)
            texts.append(base.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                         + render_action(action_from_expected(r["expected_action"])))
    tok = base.train_new_from_iterator(texts, vocab_size=cfg.model.tokenizer_vocab_size)
    tmp = run_dir / "tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
    tmp.rename(run_dir / "tokenizer")
    log.info("trained a %d-token domain tokenizer on %d texts -> %s", len(tok), len(texts), run_dir / "tokenizer")


def _candidates_of(cfg: PivotRLConfig, run_dir: Path) -> dict[str, list[dict]]:
    trajs = read_jsonl(run_dir / "data" / "trajectories.jsonl")
    assignment = json.loads((run_dir / "data" / "splits.json").read_text())
    out: dict[str, list[dict]] = {s: [] for s in cfg.data.split_fractions}
    for t in trajs:
        split = assignment[t["id"]]
        out[split].extend(extract_candidates(t, split, cfg.verifier.name))
    return out


def extract(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """One pivot row per eligible assistant turn, per split (split by trajectory id)."""
    summary = {}
    for split, rows in _candidates_of(cfg, run_dir).items():
        atomic_write_jsonl(run_dir / "candidates" / f"{split}.jsonl", rows)
        summary[split] = {"candidates": len(rows), "by_action_type": dict(Counter(r["expected_action"]["type"] for r in rows))}
    return summary


def _sft_examples(rt, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    from .rollout.chat import render_training_example
    from .data.actions import action_from_expected, render_action

    out = []
    for r in rows:
        action = render_action(action_from_expected(r["expected_action"]))
        ids, mask = render_training_example(r, action, rt.tokenizer, rt.cfg.data)
        start = mask.index(1)  # the mask is 1 exactly on the action and its end-of-turn token
        out.append((ids[:start], ids[start:]))
    return out


def sft(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """pi_0: supervised fine-tuning of a fresh policy on the 'sft' split's expert actions."""
    from .algorithms.sft import action_nll, train_sft

    rt = runtime(cfg)
    cands = _candidates_of(cfg, run_dir)
    train_ex = _sft_examples(rt, cands["sft"])
    policy = rt.new_policy(cfg.sft.optim, total_steps=max(cfg.sft.steps, 1), freeze_router=False)
    if cfg.model.init_checkpoint:
        policy.load(cfg.model.init_checkpoint, load_optimizer=False)
        log.info("sft: starting from %s", cfg.model.init_checkpoint)
    last: dict = {}
    if cfg.sft.steps > 0:
        with MetricsWriter(run_dir / "sft") as mw:
            last = train_sft(policy, train_ex, cfg.sft, rt.pad_id, mw, impl=cfg.loss.impl,
                             micro_batch_size=cfg.algorithm.micro_batch_size)
    held = cands.get("val") or cands.get("rl") or []
    nll = action_nll(policy, _sft_examples(rt, held[:64]), rt.pad_id) if held else None
    # pi_0: one dist checkpoint (weights, optimizer, config); a re-run replaces it
    from .config import to_yaml
    from .models.megatron.checkpoint import Retention

    policy.save(run_dir / "sft" / "checkpoint", policy.step_count, metrics=last, config_yaml=to_yaml(cfg),
                retention=Retention(keep_last=1))
    return {"examples": len(train_ex), "final_loss": last.get("sft/loss"), "heldout_action_nll": nll,
            "init_checkpoint": cfg.model.init_checkpoint}


def _pi0(cfg: PivotRLConfig, run_dir: Path, optim=None, total_steps: int = 1):
    rt = runtime(cfg)
    policy = rt.new_policy(optim or cfg.algorithm.optim, total_steps=total_steps)
    policy.load(run_dir / "sft" / "checkpoint", load_optimizer=False)
    return rt, policy


def profile(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """K samples per RL-split candidate from the frozen pi_0; resumable per candidate.

    In a Slurm array (``sbatch --array=0-N launchers/pivot_rl.slurm profile ...``) each task
    profiles its shard of the candidates into ``profile/shards/`` and stops there; the next plain
    ``pivotrl profile`` finishes any incomplete shard, merges (every candidate exactly once) and
    completes the stage. Without an array, one resumable log ``profile/profile_log.jsonl``.
    """
    from .algorithms.profile_shards import (
        merge_profiles, profile_missing_shards, profile_shard, shard_from_env, shard_layouts)
    from .algorithms.profiling import attach_profile, profile_candidates
    from .stages import StagePartial

    rows, skipped = load_pivot_rows(str(run_dir / "candidates" / "rl.jsonl"), cfg.data.skip_invalid)
    rt, policy = _pi0(cfg, run_dir)
    engine, _ = rt.engine_for(policy)
    sampler = rt.sampler_for(engine)
    chunk = max(1, cfg.rollout.batch_size // cfg.profile.k)
    shard_dir, spec = run_dir / "profile" / "shards", shard_from_env()
    if spec.count > 1:
        done = profile_shard(rows, sampler, cfg.profile, cfg.rollout.sampling, shard_dir, spec, "pi0:sft", chunk)
        raise StagePartial(f"profiled {spec.tag} ({done.get('candidates', '?')} candidates); run `pivotrl profile` "
                           "once without the array to merge the shards")
    layouts, n = shard_layouts(shard_dir), 1
    if layouts:
        if len(layouts) > 1:
            raise RuntimeError(f"{shard_dir} holds shard logs of several layouts {sorted(layouts)}; remove the stale ones")
        n = layouts.pop()
        profile_missing_shards(rows, sampler, cfg.profile, cfg.rollout.sampling, shard_dir, n, "pi0:sft", chunk)
        profs = merge_profiles(rows, shard_dir, n)
    else:
        profs = profile_candidates(rows, sampler, cfg.profile, cfg.rollout.sampling,
                                   run_dir / "profile" / "profile_log.jsonl", policy_id="pi0:sft",
                                   chunk_candidates=chunk)
    out = [attach_profile(r, profs[r["id"]]) for r in rows]
    atomic_write_jsonl(run_dir / "profile" / "profiled.jsonl", out)
    mean = sum(p["mean"] for p in profs.values()) / max(len(profs), 1)
    return {"candidates": len(out), "skipped_invalid": skipped, "k": cfg.profile.k, "mean_pass_rate": mean,
            "shards": n}


def filter_stage(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """Keep variance > 0 and mean < lambda_diff; summary + pass-rate histogram."""
    from .algorithms.filtering import filter_pivots
    from .utils.report import plot_pass_rate_histogram

    rows = read_jsonl(run_dir / "profile" / "profiled.jsonl")
    pivots, summary = filter_pivots(rows, cfg.filter)
    atomic_write_jsonl(run_dir / "pivots.jsonl", pivots)
    atomic_write_json(run_dir / "filter_summary.json", summary)
    plot_pass_rate_histogram([r["profile"]["mean"] for r in rows], cfg.filter.lambda_diff, cfg.profile.k,
                             run_dir / "plots" / "pass_rate_hist.png")
    if not pivots:
        raise RuntimeError("the filter kept no pivots: pi_0 solves every candidate always or never "
                           f"(summary: {run_dir / 'filter_summary.json'}); try more SFT steps, a larger "
                           "profile.k, or a higher filter.lambda_diff")
    return summary


def train(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """GRPO on the pivots with one-turn rollouts, starting from pi_0 (data-parallel over ranks)."""
    from .algorithms.pivot_rl import train_pivot_rl
    from .distributed.dp import current_dp

    pivots, skipped = load_pivot_rows(str(run_dir / "pivots.jsonl"), cfg.data.skip_invalid)
    rt, policy = _pi0(cfg, run_dir, cfg.algorithm.optim, cfg.algorithm.steps)
    # The KL reference is pi_0 itself, frozen; with kl_coef == 0 (the default) it is never built.
    ref = _pi0(cfg, run_dir)[1] if cfg.algorithm.kl_coef > 0 else None
    dp = current_dp()
    engine, sync = rt.engine_for(policy)
    mw = MetricsWriter(run_dir / "train") if dp.is_main else None
    try:
        last = train_pivot_rl(policy, rt.sampler_for(engine), sync, pivots, cfg, run_dir / "train", mw, rt.pad_id, dp,
                              ref_policy=ref)
    finally:
        if mw is not None:
            mw.close()
    return {"pivots": len(pivots), "skipped_invalid": skipped, "steps": cfg.algorithm.steps, "dp_size": dp.size,
            **{k: v for k, v in last.items() if k.startswith("train/")}}


def _score(rt, policy, rows: list[dict], cfg: PivotRLConfig) -> list[float]:
    from tqdm import tqdm

    engine, _ = rt.engine_for(policy)
    sampler = rt.sampler_for(engine)
    e = cfg.eval
    per = max(1, cfg.rollout.batch_size // e.samples_per_candidate)
    scores: list[float] = []
    for i in tqdm(range(0, len(rows), per), desc="eval", unit="batch", dynamic_ncols=True):
        groups = sampler.sample_and_score(rows[i:i + per], e.samples_per_candidate, cfg.rollout.sampling,
                                          seed=e.seed + i, temperature=e.temperature)
        scores.extend(sum(g.rewards) / len(g.rewards) for g in groups)
    return scores


def evaluate(cfg: PivotRLConfig, run_dir: Path) -> dict:
    """Turn-level functional accuracy of pi_0 and the PivotRL policy on held-out candidates."""
    from .algorithms.evaluation import paired_bootstrap_ci

    rows, _ = load_pivot_rows(str(run_dir / "candidates" / f"{cfg.eval.split}.jsonl"), cfg.data.skip_invalid)
    rt, pi0 = _pi0(cfg, run_dir)
    s0 = _score(rt, pi0, rows, cfg)
    trained = rt.new_policy(cfg.algorithm.optim, total_steps=1)
    trained.load(run_dir / "train" / "checkpoint", load_optimizer=False)
    s1 = _score(rt, trained, rows, cfg)
    lo, hi = paired_bootstrap_ci(s0, s1, cfg.eval.bootstrap_samples, cfg.eval.seed)
    res = {"split": cfg.eval.split, "n_eval": len(rows), "samples_per_candidate": cfg.eval.samples_per_candidate,
           "temperature": cfg.eval.temperature, "pi0_accuracy": sum(s0) / len(s0), "pivotrl_accuracy": sum(s1) / len(s1),
           "delta_ci95": [lo, hi], "pi0_scores": s0, "pivotrl_scores": s1,
           "by_action_type": dict(Counter(r["expected_action"]["type"] for r in rows))}
    res["delta"] = res["pivotrl_accuracy"] - res["pi0_accuracy"]
    atomic_write_json(run_dir / "eval" / "results.json", res)
    return {k: v for k, v in res.items() if not k.endswith("_scores")}


def report(cfg: PivotRLConfig, run_dir: Path) -> dict:
    from .stages import Runner
    from .utils.report import write_report

    return write_report(cfg, run_dir, Runner(cfg).stage_seconds())


STAGE_FUNCS = {"build": build, "sft": sft, "extract": extract, "profile": profile, "filter": filter_stage,
               "train": train, "eval": evaluate, "report": report}
