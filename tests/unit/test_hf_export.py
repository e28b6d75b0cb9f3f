"""megatron policy -> HF checkpoint folder: ``from_pretrained`` gives the same logits, the files
hold exactly what ``megatron_to_hf`` (the weight-sync gather path) streams; the CLI path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.models.megatron.hf.exporter import export_hf
from pivotrl_nemo.models.megatron.hf.importer import import_hf_checkpoint
from pivotrl_nemo.models.megatron.hf.mapping import megatron_to_hf
from pivotrl_nemo.models.megatron.policy import MegatronPolicy
from pivotrl_nemo.pipeline.runtime import padded_vocab_size

TINY = ModelConfig(
    hidden_size=64,
    num_layers=2,
    num_attention_heads=4,
    num_query_groups=2,
    head_dim=16,
    num_experts=4,
    moe_ffn_hidden_size=32,
    moe_router_topk=2,
    max_position_embeddings=64,
    init_method_std=0.06,
)


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


@pytest.fixture(scope="module")
def tokenizer():
    from pivotrl_nemo.data.tokenizer import load_tokenizer

    return load_tokenizer("smollm2")


def _policy(cfg: ModelConfig, vocab: int) -> MegatronPolicy:
    policy = MegatronPolicy(cfg, vocab, OptimConfig(lr=1e-2))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # norms start at one: make a norm mix-up visible
        for name, p in policy.gpt.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return policy


def _ids(tokenizer) -> torch.Tensor:
    rows = tokenizer(
        ["Call get_weather(city='Paris') now.", "The capital of France is"],
        return_tensors="pt",
        padding=True,
        padding_side="right",
    )
    return rows.input_ids


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        dataclasses.replace(TINY, num_experts=0, ffn_hidden_size=96, tie_word_embeddings=True),
        dataclasses.replace(TINY, num_experts=0, ffn_hidden_size=96, qk_layernorm=False, tie_word_embeddings=True),
    ],
    ids=["moe", "dense-tied", "llama-tied"],
)
def test_export_loads_back_with_same_logits_and_tensors(cfg, tokenizer, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vocab = padded_vocab_size(len(tokenizer))
    policy = _policy(cfg, vocab)
    out = export_hf(policy, cfg, tokenizer, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"], "temporary folder left behind"
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (out / f).is_file(), f

    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = _ids(tok)
    assert torch.equal(ids, _ids(tokenizer))
    policy.eval()
    with torch.no_grad():
        ours = policy.forward_logits(ids)
        theirs = hf(input_ids=ids).logits.float()
    assert theirs.abs().max() > 0.3, "weights too small for a meaningful comparison"
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    # what weight sync streams == what the reloaded model holds, bit for bit
    streamed = {k: v.detach().clone() for k, v in megatron_to_hf(policy.model, cfg)}
    loaded = dict(hf.named_parameters())
    assert set(streamed) == set(loaded)
    for k, v in streamed.items():
        assert torch.equal(v, loaded[k]), k
    # ... and the on-disk tensors are exactly transformers' own serialisation of them
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        on_disk = set(f.keys())
    if cfg.num_experts:
        assert "model.layers.0.mlp.experts.3.gate_proj.weight" in on_disk
    assert ("lm_head.weight" in on_disk) != cfg.tie_word_embeddings

    # round trip through the importer: the same megatron function
    cfg2, gpt2 = import_hf_checkpoint(out)
    assert (cfg2.num_experts, cfg2.tie_word_embeddings, cfg2.qk_layernorm) == (
        cfg.num_experts,
        cfg.tie_word_embeddings,
        cfg.qk_layernorm,
    )
    gpt2.eval()
    with torch.no_grad():
        again = gpt2(ids, torch.arange(ids.shape[1]).expand_as(ids), None).float()
    torch.testing.assert_close(again, ours, atol=1e-5, rtol=0)

    with pytest.raises(FileExistsError):
        export_hf(policy, cfg, tokenizer, out)
    export_hf(policy, cfg, tokenizer, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_export_cli_from_run_dir(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.pipeline.hf_commands import export_main

    run_dir = tmp_path / "run"
    cfg = load_config([f"run_dir={run_dir}"])
    model_cfg = dataclasses.replace(cfg.model, hidden_size=64, head_dim=16, moe_ffn_hidden_size=32)
    policy = _policy(model_cfg, padded_vocab_size(len(tokenizer)))
    policy.save(run_dir / "sft" / "checkpoint")
    out = tmp_path / "exported"
    assert export_main([f"run_dir={run_dir}", "export.checkpoint=sft", f"export.out={out}"]) == 0
    assert export_main([f"run_dir={run_dir}", "export.checkpoint=train", f"export.out={out}"]) == 1
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    ids = _ids(tokenizer)
    policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits.float(), policy.forward_logits(ids), atol=1e-4, rtol=0)
