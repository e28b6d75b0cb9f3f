"""GPU smoke test: what only a GPU can show, in a few minutes, without internet.

    bash scripts/gpu_smoke.sh [OUT_DIR]        # installs carried wheels if needed, then runs this

1. Environment: device, torch / CUDA / megatron-core / Transformer Engine / triton versions.
2. Conversion: a tiny random Qwen3-MoE written by transformers is imported into megatron-core on
   CUDA (NCCL process group, the TE spec when TE is importable, local spec otherwise) and its
   logits are compared with transformers' on the same GPU (fp32).
3. Training: GRPO steps in bf16 with the fused Triton log-prob kernel (``loss.impl=triton``) and,
   when asked, megatron's distributed optimizer; the loss must be finite and the weights move.
4. Checkpoint round trip: save a megatron dist checkpoint, load it into a fresh policy, same loss.
5. Hybrid conversion: a tiny random Nemotron-H through megatron's HybridModel with mamba-ssm's
   kernels (skipped, and said so, where mamba-ssm is not installed).

Writes ``OUT_DIR/gpu_smoke.json`` and prints a summary; exits non-zero on any failed check.
Every number in the JSON is measured in this run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from pivotrl_nemo.algorithms.grpo_step import grpo_step
from pivotrl_nemo.config.schema import AlgorithmConfig, ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.dp import current_dp
from pivotrl_nemo.distributed.setup import init_distributed
from pivotrl_nemo.models.megatron import sharding
from pivotrl_nemo.models.megatron.build import use_transformer_engine
from pivotrl_nemo.models.megatron.hf.importer import import_hf_checkpoint
from pivotrl_nemo.models.megatron.policy import MegatronPolicy


def _env() -> dict:
    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "megatron_core": ver("megatron-core"),
        "transformer_engine": ver("transformer-engine") or ver("transformer_engine"),
        "triton": ver("triton"),
        "transformers": ver("transformers"),
    }


def _tiny_qwen3_moe(path: Path) -> None:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM  # lazy: transformers takes ~1 s to import

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=False,
        max_position_embeddings=256,
    )
    Qwen3MoeForCausalLM(cfg).to(torch.float32).save_pretrained(path)


def check_conversion(work: Path) -> dict:
    from transformers import AutoModelForCausalLM  # lazy: transformers

    hf_dir = work / "tiny_qwen3_moe"
    _tiny_qwen3_moe(hf_dir)
    _, gpt = import_hf_checkpoint(hf_dir, params_dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).cuda().eval()
    ids = torch.randint(0, 512, (2, 48), device="cuda")
    pos = torch.arange(48, device="cuda").expand(2, 48)
    with torch.no_grad():
        ours = gpt.eval()(ids, pos, None).float()
        theirs = hf(ids).logits.float()
    diff = float((ours - theirs).abs().max())
    return {"max_abs_logit_diff": diff, "ok": diff < 1e-3}


def check_hybrid_conversion(work: Path) -> dict:
    """A tiny random Nemotron-H (Mamba-2, attention, MoE, MLP) through megatron's HybridModel on
    CUDA: mamba-ssm's kernels and the fused Mamba path, the TE hybrid spec when TE is importable;
    logits against transformers' on the same GPU. Recorded as skipped without mamba-ssm."""
    import importlib.util

    from transformers import AutoModelForCausalLM, NemotronHConfig  # lazy: transformers

    if importlib.util.find_spec("mamba_ssm") is None:
        return {"ok": True, "skipped": "mamba-ssm is not installed (pip install '.[gpu]' or an NGC image)"}
    config = NemotronHConfig(
        vocab_size=512, hidden_size=128, layers_block_type=["mamba", "attention", "moe", "mlp"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=256, mamba_num_heads=8,
        mamba_head_dim=32, ssm_state_size=16, n_groups=2, chunk_size=64, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=64, moe_shared_expert_intermediate_size=64, time_step_min=1e-9,
    )  # fmt: skip
    hf_dir = work / "tiny_nemotron_h"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(hf_dir)
    cfg, gpt = import_hf_checkpoint(hf_dir, params_dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).cuda().eval()
    ids = torch.randint(0, 512, (2, 128), device="cuda")
    pos = torch.arange(128, device="cuda").expand(2, 128)
    with torch.no_grad():
        ours = gpt.eval()(ids, pos, None).float()
        theirs = hf(ids).logits.float()
    diff = float((ours - theirs).abs().max())
    fused = bool(gpt.config.use_mamba_mem_eff_path)
    return {
        "max_abs_logit_diff": diff,
        "fused_mamba_path": fused,
        "te_spec": use_transformer_engine(cfg),
        "ok": diff < 1e-3,
    }


def check_training(work: Path, steps: int, distributed_optimizer: bool) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "dist"))
    from grpo_dp_worker import fixed_groups  # here: importable only once tests/dist is on sys.path

    mcfg = ModelConfig(
        hidden_size=128,
        num_layers=2,
        num_attention_heads=4,
        num_query_groups=2,
        head_dim=32,
        num_experts=4,
        moe_ffn_hidden_size=64,
        params_dtype="bfloat16",
        transformer_impl="auto",
    )
    parallel = ParallelConfig(use_distributed_optimizer=distributed_optimizer)

    def policy() -> MegatronPolicy:
        return MegatronPolicy(mcfg, 128, OptimConfig(lr=1e-3), parallel=parallel)

    p = policy()
    before = {k: v.float().clone() for k, v in sharding.iter_full_state(p)}
    acfg = AlgorithmConfig(micro_batch_size=4)
    losses, times = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        m = grpo_step(p, fixed_groups(), acfg, 0, 1.0, "triton", current_dp())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(m["loss"])
    after = {k: v.float() for k, v in sharding.iter_full_state(p)}
    moved = max(float((after[k] - before[k]).abs().max()) for k in before)
    out = {
        "transformer_engine_spec": use_transformer_engine(mcfg),
        "distributed_optimizer": distributed_optimizer,
        "losses": losses,
        "step_s": times,
        "max_weight_change": moved,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }

    ckpt = work / "ckpt"
    p.save(ckpt, step=steps, extra={"loop_step": steps})
    q = policy()
    extra = q.load(ckpt)
    a = grpo_step(p, fixed_groups(), acfg, 0, 1.0, "triton", current_dp())["loss"]
    b = grpo_step(q, fixed_groups(), acfg, 0, 1.0, "triton", current_dp())["loss"]
    out["checkpoint"] = {"extra": extra, "loss_saved_policy": a, "loss_loaded_policy": b}
    out["ok"] = (
        all(torch.isfinite(torch.tensor(losses)))
        and moved > 0
        and extra.get("loop_step") == steps
        and abs(a - b) <= 1e-3 * max(1.0, abs(a))
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_smoke_out")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device; nothing to do", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"env": _env()}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        init_distributed(ParallelConfig(), seed=0)
        for name, fn in (
            ("conversion", lambda: check_conversion(Path(tmp))),
            ("hybrid_conversion", lambda: check_hybrid_conversion(Path(tmp))),
            ("training", lambda: check_training(Path(tmp) / "a", args.steps, False)),
            ("training_distributed_optimizer", lambda: check_training(Path(tmp) / "b", args.steps, True)),
        ):
            try:
                report[name] = fn()
            except Exception:  # noqa: BLE001 - a smoke test reports every failure, then fails
                report[name] = {"ok": False, "error": traceback.format_exc()}
            ok = ok and bool(report[name]["ok"])
            print(f"{name}: {'ok' if report[name]['ok'] else 'FAILED'}", flush=True)
    (out_dir / "gpu_smoke.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
