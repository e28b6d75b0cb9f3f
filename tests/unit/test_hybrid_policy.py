"""The hybrid (Nemotron-H) policy: a random transformers ``NemotronH`` with all four layer kinds
(Mamba-2, attention, MoE with a shared expert and sigmoid routing with expert bias, dense
squared-ReLU MLP), imported into megatron-core's ``HybridModel``, computes transformers' logits
and gradients; export round-trips bit for bit (in memory and through a checkpoint on disk); the
torch SSD scan equals the plain recurrence; the config refuses what the family cannot build."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.setup import destroy, init_distributed
from pivotrl_nemo.kernels.ssd_reference import GatedRMSNorm, ssd_chunk_scan
from pivotrl_nemo.models.megatron.build import build_model
from pivotrl_nemo.models.megatron.hf.exporter import export_hf
from pivotrl_nemo.models.megatron.hf.importer import (
    HFImportError,
    import_hf_checkpoint,
    load_hf_into_megatron,
    model_config_from_hf,
)
from pivotrl_nemo.models.megatron.hf.mapping import build_hf_model, hf_from_megatron_stream, megatron_to_hf
from pivotrl_nemo.models.megatron.sharding import named_tensors, shards

VOCAB = 256


def nemotron_h_config(**overrides):
    from transformers import NemotronHConfig

    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        layers_block_type=["mamba", "attention", "moe", "mlp"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
        mamba_num_heads=8,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=2,
        chunk_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=48,
        routed_scaling_factor=1.5,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.05,
        max_position_embeddings=128,
        # transformers clamps each Mamba step at time_step_min, megatron does not (hf/nemotron_h.py):
        # a floor far below any step here makes the two the same function
        time_step_min=1e-9,
        time_step_floor=1e-4,
    )
    return NemotronHConfig(**kw | overrides)


@pytest.fixture(scope="module", autouse=True)
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(nemotron_h_config(), dtype=torch.float32)
    with torch.no_grad():  # norms start at one, A/D/dt at init values, the bias at zero: perturb all
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("A_log", ".D", "dt_bias")):
                p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model.eval()


@pytest.fixture(scope="module")
def imported(hf_model):
    cfg = model_config_from_hf(hf_model.config)
    model = build_model(cfg, VOCAB)
    load_hf_into_megatron(model, hf_model.state_dict(), cfg)
    return cfg, model


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(1))  # not a chunk multiple
    return ids, torch.arange(ids.shape[1])[None].expand(2, -1)


def test_config_from_nemotron_h_names_every_layer_kind(imported):
    cfg, _ = imported
    assert cfg.arch == "hybrid" and cfg.hybrid_layer_pattern == "M*E-"
    assert (cfg.moe_router_score_function, cfg.moe_router_expert_bias) == ("sigmoid", True)
    assert (cfg.mlp_activation, cfg.position_embedding) == ("squared_relu", "none")
    assert cfg.moe_shared_expert_ffn_hidden_size == 48 and cfg.moe_router_topk_scaling_factor == 1.5


def test_imported_model_gives_transformers_logits_and_gradients(hf_model, imported):
    cfg, model = imported
    ids, pos = _ids()
    hf_model.zero_grad()
    model.zero_grad()
    ref = hf_model(input_ids=ids).logits
    out = model(ids, pos, None)
    scale = ref.abs().max()
    assert (out - ref).abs().max() / scale < 1e-4
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (ref * weights).sum().backward()
    (out * weights).sum().backward()
    params = dict(model.named_parameters())
    grads = ((s.global_name, params[s.local_name].grad) for s in shards(model) if s.local_name in params)
    hf_grads = dict(hf_from_megatron_stream(grads, cfg))
    hf_params = dict(hf_model.named_parameters())
    assert set(hf_grads) == set(hf_params)  # every HF parameter gets a megatron gradient
    for name, g in hf_grads.items():
        want = hf_params[name].grad
        assert want is not None and g is not None, name
        assert (g - want).abs().max() <= 1e-4 * want.abs().max() + 1e-7, name


def test_export_round_trips_bit_identically(hf_model, imported, tmp_path):
    cfg, model = imported
    state = hf_model.state_dict()
    back = dict(megatron_to_hf(model, cfg))
    assert set(back) == set(state)  # the expert-bias buffer included
    assert all(torch.equal(back[k], state[k]) for k in state)
    out = export_hf(model, cfg, None, tmp_path / "hf")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "backbone.layers.2.mixer.experts.3.up_proj.weight" in keys  # checkpoints on disk: per expert
    assert "backbone.layers.2.mixer.gate.e_score_correction_bias" in keys
    cfg2, model2 = import_hf_checkpoint(out)
    assert dataclasses.replace(cfg2, name=cfg.name) == cfg
    a, b = named_tensors(model), named_tensors(model2)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_twin_loads_a_synced_stream(imported):
    """The in-process rollout engine's twin takes the stream (parameters and the expert bias)."""
    from pivotrl_nemo.models.megatron.hf.mapping import load_named_tensors_into

    cfg, model = imported
    twin = build_hf_model(cfg, VOCAB)
    n = load_named_tensors_into(twin, megatron_to_hf(model, cfg))
    assert n == len(dict(twin.named_parameters())) + 1
    ids, pos = _ids()
    with torch.no_grad():
        assert torch.allclose(twin(input_ids=ids).logits, model(ids, pos, None), atol=1e-4, rtol=1e-4)


def test_one_training_step_moves_the_hybrid_policy(imported):
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    cfg, _ = imported
    policy = MegatronPolicy(cfg, VOCAB, OptimConfig(lr=1e-2))
    before = {k: v.clone() for k, v in named_tensors(policy.gpt).items()}
    from pivotrl_nemo.models.megatron.batching import make_batch

    batch = make_batch([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15, 16, 17]], pad_id=0)

    def loss_fn(_i, mb, hidden, weight):
        logits = hidden.float() @ weight.float().t()
        return torch.nn.functional.cross_entropy(logits, mb.targets), {}

    policy.zero_grad()
    policy.forward_backward([batch], loss_fn)
    policy.optimizer_step()
    after = named_tensors(policy.gpt)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(".mixer.in_proj." in k for k in moved) and any("local_experts" in k for k in moved)
    bias = [k for k in before if k.endswith("expert_bias")]
    assert bias and all(torch.equal(before[k], after[k]) for k in bias)  # bias_update_rate=0 keeps it


def _sequential_scan(x, dt, A, B, C, D, dt_bias):
    """The Mamba-2 recurrence one step at a time (the definition the chunked scan computes)."""
    dt = torch.nn.functional.softplus(dt + dt_bias)
    heads, groups = x.shape[2], B.shape[2]
    Bh, Ch = (t.repeat_interleave(heads // groups, dim=2) for t in (B, C))
    state = torch.zeros(x.shape[0], heads, x.shape[3], B.shape[3], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("length", [1, 16, 37])
def test_ssd_chunk_scan_equals_the_recurrence(length):
    g = torch.Generator().manual_seed(length)
    b, h, p, groups, n = 2, 4, 8, 2, 6
    x, dt = torch.randn(b, length, h, p, generator=g), torch.randn(b, length, h, generator=g)
    A, D, bias = -torch.rand(h, generator=g) * 4, torch.randn(h, generator=g), torch.randn(h, generator=g)
    B, C = torch.randn(b, length, groups, n, generator=g), torch.randn(b, length, groups, n, generator=g)
    y, final = ssd_chunk_scan(x, dt, A, B, C, 16, D=D, dt_bias=bias, dt_softplus=True, return_final_states=True)
    want_y, want_final = _sequential_scan(x, dt, A, B, C, D, bias)
    assert torch.allclose(y, want_y, atol=1e-4, rtol=1e-4)
    assert torch.allclose(final, want_final, atol=1e-4, rtol=1e-4)
    # resuming from the final state of the first part gives the rest of the sequence
    if length > 1:
        k = length // 2
        _, s1 = ssd_chunk_scan(
            x[:, :k], dt[:, :k], A, B[:, :k], C[:, :k], 16, dt_bias=bias, dt_softplus=True, return_final_states=True
        )
        y2 = ssd_chunk_scan(
            x[:, k:], dt[:, k:], A, B[:, k:], C[:, k:], 16, D=D, dt_bias=bias, dt_softplus=True, initial_states=s1
        )
        assert torch.allclose(y2, want_y[:, k:], atol=1e-4, rtol=1e-4)


def test_gated_rmsnorm_gates_before_the_norm_per_group():
    norm = GatedRMSNorm(8, eps=1e-5, group_size=4, norm_before_gate=False)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    h = (x * torch.nn.functional.silu(z)).view(3, 2, 4)
    want = (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 8) * norm.weight
    assert torch.allclose(norm(x, z), want, atol=1e-6)
    whole = GatedRMSNorm(8, group_size=8, norm_before_gate=False)  # one group: a different function
    assert not torch.allclose(whole(x, z), norm(x, z) / norm.weight)


def test_import_refuses_what_the_hybrid_policy_cannot_express():
    with pytest.raises(HFImportError, match="norm_topk_prob"):
        model_config_from_hf(nemotron_h_config(norm_topk_prob=False))
    with pytest.raises(HFImportError, match="moe_latent_size"):
        model_config_from_hf(nemotron_h_config(moe_latent_size=32))
    with pytest.raises(HFImportError, match="bias"):
        model_config_from_hf(nemotron_h_config(mlp_bias=True))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(hybrid_layer_pattern="M*X"), "one symbol per layer"),
        (dict(hybrid_layer_pattern="M*E"), "num_layers=4"),
        (dict(num_experts=0), "need num_experts > 0"),
        (dict(mamba_num_groups=3), "must divide model.mamba_num_heads"),
    ],
)
def test_bad_hybrid_configs_are_refused_with_the_field(imported, change, message):
    cfg, _ = imported
    with pytest.raises(ValueError, match=message):
        build_model(dataclasses.replace(cfg, **change), VOCAB)


def test_gpt_arch_still_builds_from_the_same_entry_point():
    model = build_model(
        ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, num_query_groups=1, head_dim=16), VOCAB
    )
    assert type(model).__name__ == "GPTModel"


def test_vllm_checkpoint_names_match_the_saved_nemotron_h_checkpoint(hf_model, imported, tmp_path):
    """What weight sync sends a vLLM engine is the checkpoint transformers writes (``backbone.``
    is vLLM's alias of ``model.``), names and values."""
    from safetensors.torch import load_file

    from pivotrl_nemo.weight_sync.vllm_sync import to_checkpoint_names

    cfg, model = imported
    hf_model.save_pretrained(tmp_path)
    saved = {k.replace("backbone.", "model.", 1): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    ours = dict(to_checkpoint_names(megatron_to_hf(model, cfg)))
    assert sorted(ours) == sorted(saved)
    assert all(torch.equal(ours[k], saved[k]) for k in saved)


def test_import_cli_writes_a_hybrid_checkpoint_that_model_from_rebuilds(hf_model, tmp_path, capsys):
    """``pivotrl import`` of a Nemotron-H folder writes model.yaml with the hybrid keys; a run
    configured by ``model_from=`` alone builds the same model and loads its weights."""
    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy
    from pivotrl_nemo.pipeline.hf_commands import import_main

    hf_model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    out = tmp_path / "ckpt"
    assert (
        import_main(
            [
                f"hf_dir={tmp_path / 'hf'}",
                f"out={out}",
                f"run_dir={tmp_path / 'run'}",
                "data.max_prompt_tokens=32",
                "rollout.sampling.max_new_tokens=16",
            ]
        )
        == 0
    )
    assert "hybrid_layer_pattern: M*E-" in capsys.readouterr().out
    cfg = load_config(
        [
            f"model_from={out}",
            f"run_dir={tmp_path / 'run'}",
            "data.max_prompt_tokens=32",
            "rollout.sampling.max_new_tokens=16",
        ]
    )
    m = cfg.model
    assert (m.arch, m.hybrid_layer_pattern, m.mamba_num_heads, m.moe_shared_expert_ffn_hidden_size) == (
        "hybrid",
        "M*E-",
        8,
        48,
    )
    policy = MegatronPolicy(m, VOCAB, OptimConfig())
    policy.load(out, load_optimizer=False)
    policy.eval()
    ids, _ = _ids()
    with torch.no_grad():
        torch.testing.assert_close(policy.forward_logits(ids), hf_model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_dist_checkpoint_round_trip_keeps_every_hybrid_tensor(imported, tmp_path):
    """A dist checkpoint of the hybrid policy (Mamba mixer, gated norm, expert bias, optimizer)
    restores every tensor and the next step exactly."""
    from pivotrl_nemo.models.megatron.batching import make_batch
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    cfg, model = imported
    batch = make_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)

    def step(policy):
        def loss_fn(_i, mb, hidden, weight):
            return torch.nn.functional.cross_entropy(hidden.float() @ weight.float().t(), mb.targets), {}

        policy.zero_grad()
        policy.forward_backward([batch], loss_fn)
        policy.optimizer_step()

    a = MegatronPolicy(cfg, VOCAB, OptimConfig(lr=1e-2))
    with torch.no_grad():  # a non-zero expert bias, so that a bias lost in the checkpoint shows
        for name, t in named_tensors(a.gpt).items():
            if name.endswith("expert_bias"):
                t.copy_(torch.linspace(-0.1, 0.1, t.numel()))
    step(a)
    a.save(tmp_path / "ckpt")
    b = MegatronPolicy(dataclasses.replace(cfg, seed=cfg.seed + 1), VOCAB, OptimConfig(lr=1e-2))
    b.load(tmp_path / "ckpt")
    ta, tb = named_tensors(a.gpt), named_tensors(b.gpt)
    assert all(torch.equal(ta[k], tb[k]) for k in ta), [k for k in ta if not torch.equal(ta[k], tb[k])]
    step(a)
    step(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_tiny_hybrid_preset_validates_and_bad_keys_are_named():
    from pivotrl_nemo.config import ConfigError, load_config

    m = load_config(["experiment=quickstart", "model=tiny_hybrid"]).model
    assert (m.arch, m.hybrid_layer_pattern, m.num_layers) == ("hybrid", "ME*E", 4)
    for overrides, key in [
        (["model=tiny_hybrid", "parallel.pipeline_model_parallel_size=2"], "parallel.pipeline_model_parallel_size"),
        (["model=tiny_hybrid", "model.hybrid_layer_pattern=ME*"], "model.num_layers"),
        (["model=tiny_hybrid", "model.position_embedding=rope"], "model.position_embedding"),
        (["model=tiny_hybrid", "model.qk_layernorm=true"], "model.qk_layernorm"),
        (["model.mlp_activation=squared_relu"], "model.mlp_activation"),  # the gpt family's twins are SwiGLU
        (["model.moe_shared_expert_ffn_hidden_size=64"], "model.moe_shared_expert_ffn_hidden_size"),
        (["model.arch=mamba"], "model.arch"),
    ]:
        with pytest.raises(ConfigError, match=f"config key '{re.escape(key)}'"):
            load_config(overrides)


def test_hf_engine_decodes_the_hybrid_twin_with_left_padding_and_early_stops(hf_model):
    """The in-process rollout engine on a Nemotron-H: prompts of different lengths (left-padded
    prefill), several samples each, sequences leaving the batch at a stop token (the Mamba conv
    and SSM states are cut with the attention cache); every sampling log-prob equals the one of
    an unpadded full forward."""
    from pivotrl_nemo.rollout.base import SamplingParams
    from pivotrl_nemo.rollout.hf import HFRolloutEngine

    class Tok:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=False):
            return " ".join(map(str, ids))

    stops = list(range(236, 256))  # ~8% of the vocabulary: some samples stop early, at different steps
    eng = HFRolloutEngine(hf_model, Tok(), batch_size=5, stop_token_ids=stops)
    prompts = [[3, 17, 42, 9, 100, 7, 55, 20, 21], [8, 9], [10, 11, 12, 13]]
    results = eng.generate(prompts, 3, SamplingParams(temperature=1.0, max_new_tokens=8, seed=3))
    finishes = {c.finish_reason for comps in results for c in comps}
    assert finishes == {"stop", "length"}, finishes
    for prompt, comps in zip(prompts, results):
        for c in comps:
            with torch.no_grad():
                logits = hf_model(input_ids=torch.tensor([prompt + c.token_ids])).logits[0].float()
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            ref = logp[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)]
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4), (c.logprobs, ref.tolist())
