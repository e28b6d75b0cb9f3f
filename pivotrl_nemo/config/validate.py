"""Start-up validation: every field's own range or choices (declared next to the field in
``schema.py`` with ``bounded`` / ``choice``, checked here by ``check_fields``), then the
cross-field rules; each failure names the key and says what to change."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from pivotrl_nemo.distributed.env import world_size
from pivotrl_nemo.registry import DOMAINS, ENGINES, MODEL_ARCHS, VERIFIERS, Registry, closest
from pivotrl_nemo.utils.metrics import WANDB_MISSING

from .errors import ConfigError
from .schema import DataConfig, ModelConfig, PivotRLConfig

METRIC_PREFIXES = ("train/", "verdict/", "time/", "moe/")
"""Prefixes of the per-step metrics the training loop logs (``algorithm.best_metric`` must name one)."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {message}")


def _check_choice(registry: Registry, value: str, allow_empty: bool = False, key: str = "") -> None:
    """``value`` names an entry of ``registry``; ``key`` when another field than the registry's own selects it."""
    if allow_empty and value == "":
        return
    _check(value in registry, key or registry.config_key, registry.unknown_message(value))


def _check_fractions(fractions: dict[str, float], key: str) -> None:
    _check(abs(sum(fractions.values()) - 1.0) < 1e-6, key, "fractions must sum to 1")
    _check(all(v >= 0 for v in fractions.values()), key, "fractions must be >= 0")


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bound_message(bounds: dict[str, float]) -> str:
    lo = next(((k, bounds[k]) for k in ("ge", "gt") if k in bounds), None)
    hi = next(((k, bounds[k]) for k in ("le", "lt") if k in bounds), None)
    if lo and hi:
        return f"must be in {'[' if lo[0] == 'ge' else '('}{lo[1]:g}, {hi[1]:g}{']' if hi[0] == 'le' else ')'}"
    k, v = next(iter(bounds.items()))
    return f"must be {_BOUND_TEXT[k]} {v:g}"


def _in_bounds(value: float, bounds: dict[str, float]) -> bool:
    # written so that NaN fails every bound
    return all({"ge": value >= v, "gt": value > v, "le": value <= v, "lt": value < v}[k] for k, v in bounds.items())


def check_fields(obj: Any, prefix: str = "") -> None:
    """Every field's declared bounds and choices (``schema.bounded`` / ``schema.choice``), walking
    nested config dataclasses; the first violation raises naming its full key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, key + ".")
            continue
        why = f" ({f.metadata['why']})" if f.metadata.get("why") else ""
        bounds = f.metadata.get("bounds")
        if bounds and value is not None:
            _check(_in_bounds(value, bounds), key, f"{_bound_message(bounds)}, got {value!r}{why}")
        choices = f.metadata.get("choices")
        if choices:
            _check(
                value in choices,
                key,
                f"use one of {', '.join(map(repr, choices))}; got {value!r}{closest(str(value), list(choices))}{why}",
            )


def validate(cfg: PivotRLConfig) -> None:
    check_fields(cfg)
    m, d, a = cfg.model, cfg.data, cfg.algorithm
    _check(
        m.num_attention_heads % m.num_query_groups == 0,
        "model.num_query_groups",
        f"must divide model.num_attention_heads ({m.num_attention_heads})",
    )
    _check(
        m.num_experts == 0 or 1 <= m.moe_router_topk <= m.num_experts,
        "model.moe_router_topk",
        f"must be in [1, model.num_experts={m.num_experts}]",
    )
    _check_choice(DOMAINS, d.source)
    for key, message in DOMAINS.get(d.source).config_problems(d):
        _check(False, key, message)
    _check_fractions(d.split_fractions, "data.split_fractions")
    _check_ood(d)
    _check(
        d.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens <= m.max_position_embeddings,
        "data.max_prompt_tokens",
        f"prompt ({d.max_prompt_tokens}) + rollout.sampling.max_new_tokens "
        f"({cfg.rollout.sampling.max_new_tokens}) exceeds model.max_position_embeddings ({m.max_position_embeddings})",
    )
    _check_choice(VERIFIERS, cfg.verifier.name, allow_empty=True)
    _check_choice(ENGINES, cfg.rollout.engine)
    if cfg.rollout.engine == "vllm":
        _check_vllm_layout(cfg)
        import torch  # lazy: about a second that only these device checks need

        _check(
            torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None,
            "rollout.engine",
            "'vllm' needs a CUDA GPU and vLLM (pip install '.[gpu]' or an NGC image); use rollout.engine=hf on CPU",
        )
    _check(
        cfg.rollout.sampling.top_p == 1.0,
        "rollout.sampling.top_p",
        "must be 1.0 for now: the trainer's log-probs are over the full softmax, so top-p sampling "
        "log-probs would bias the importance ratio",
    )
    splits = cfg.data.split_fractions
    for name in ("sft", "rl"):
        _check(name in splits, "data.split_fractions", f"needs a '{name}' split (may be 0 with a jsonl source)")
    _check(
        cfg.eval.split in splits and cfg.eval.split not in ("sft", "rl"),
        "eval.split",
        f"must be a held-out split of data.split_fractions other than 'sft' and 'rl', got {cfg.eval.split!r}",
    )
    _check(
        not a.best_metric or a.best_metric.startswith(METRIC_PREFIXES),
        "algorithm.best_metric",
        f"must be '' or a per-step training metric starting with one of {list(METRIC_PREFIXES)}, "
        f"e.g. 'train/reward_mean'; got {a.best_metric!r}",
    )
    if cfg.loss.impl == "triton":
        import torch  # lazy: about a second that only these device checks need

        _check(
            torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
            "loss.impl",
            "'triton' needs a CUDA GPU (or TRITON_INTERPRET=1 for slow CPU debugging); use loss.impl=torch on CPU",
        )
    _check_model_controls(cfg)
    _check_arch(cfg)
    _check_parallel(cfg)
    w = cfg.logging.wandb
    _check(not w.enabled or importlib.util.find_spec("wandb") is not None, "logging.wandb.enabled", WANDB_MISSING)


def _check_ood(d: DataConfig) -> None:
    """The out-of-domain family: a registered domain other than ``data.source`` (the same domain
    would be in-domain data), that can use the ``data.*`` values it is built from, and 'sft' /
    'test' fractions (the only OOD splits anything reads)."""
    _check_fractions(d.ood_split_fractions, "data.ood_split_fractions")
    taken = [s for s in d.split_fractions if s.startswith("ood_")]
    _check(not taken, "data.split_fractions", f"split names starting with 'ood_' are the OOD family's; got {taken}")
    unknown = sorted(set(d.ood_split_fractions) - {"sft", "test"})
    _check(not unknown, "data.ood_split_fractions", f"only 'sft' and 'test' splits are used; got {unknown}")
    if not d.ood_source:
        return
    _check_choice(DOMAINS, d.ood_source, key="data.ood_source")
    _check(
        d.ood_source != d.source,
        "data.ood_source",
        f"must differ from data.source ({d.source!r}): its trajectories would be in-domain",
    )
    ood = dataclasses.replace(d, source=d.ood_source, max_trajectories=d.ood_max_trajectories)
    for key, message in DOMAINS.get(d.ood_source).config_problems(ood):
        _check(False, key, f"{message} (for data.ood_source={d.ood_source!r})")


def _check_vllm_layout(cfg: PivotRLConfig) -> None:
    """Layouts the colocated vLLM engine cannot run (checked before the device check, so that a
    CPU machine reports them too)."""
    tp, world = cfg.rollout.vllm.tensor_parallel_size, world_size()
    _check(
        tp == 1 or world == 1,
        "rollout.vllm.tensor_parallel_size",
        f"must be 1 when the job has several ranks (world size {world}), got {tp}: under torchrun each vLLM "
        f"engine runs in-process (vLLM's external_launcher) and ranks [k*{tp}, (k+1)*{tp}) form one engine's "
        "tensor-parallel group, every rank of which must call generate with the same prompts; but rollouts "
        "are sampled by the first rank of each model-parallel group alone, on its own data-parallel shard "
        "of the prompts (algorithms.pivot_rl._rollouts), so generation would hang. Set "
        "rollout.vllm.tensor_parallel_size=1 (one engine per GPU) and shard the trainer with parallel.*",
    )


def _check_model_controls(cfg: PivotRLConfig) -> None:
    m = cfg.model
    rows = f"model.vocab_size={m.vocab_size} rows" if m.vocab_size else "rows"
    _check(
        not (m.init_checkpoint and m.tokenizer_vocab_size > 0),
        "model.tokenizer_vocab_size",
        f"model.init_checkpoint={m.init_checkpoint} keeps its pretrained embedding ({rows} indexed by its "
        f"own tokenizer's ids), but model.tokenizer_vocab_size={m.tokenizer_vocab_size} trains a "
        f"{m.tokenizer_vocab_size}-token domain BPE whose ids mean other tokens. Set "
        "model.tokenizer_vocab_size=0 and model.tokenizer to the checkpoint's tokenizer "
        "(model_from=<the import's out dir> sets both)",
    )
    _check(
        not (m.moe_grouped_gemm and m.num_experts > 0),
        "model.moe_grouped_gemm",
        "grouped-GEMM experts are not supported yet: Transformer Engine's TEGroupedMLP holds each layer's "
        "experts as experts.linear_fc1.weight{i} / linear_fc2.weight{i} (i = the expert's index on its EP "
        "rank), which the megatron <-> HF name mapping (models.megatron.hf.mapping) and the full-state stream "
        "(models.megatron.sharding: global expert names, EP fan-out) do not translate, so the first weight "
        "sync, HF export or HF import would fail. Set model.moe_grouped_gemm=false (SequentialMLP experts, "
        "the same function)",
    )
    _check(
        not m.moe_grouped_gemm or m.transformer_impl != "local",
        "model.moe_grouped_gemm",
        "grouped GEMM needs the Transformer Engine spec: set model.transformer_impl=transformer_engine (GPU) "
        "or model.moe_grouped_gemm=false",
    )


HYBRID_SYMBOLS = {"M": "Mamba-2", "*": "self-attention", "-": "dense MLP", "E": "MoE MLP"}
"""``model.hybrid_layer_pattern`` symbols the hybrid family builds (megatron's ``Symbols``)."""

_TWIN_KNOBS = {  # key: (gpt family's value, hybrid family's value): what each HF twin computes
    "mlp_activation": ("swiglu", "squared_relu"),
    "position_embedding": ("rope", "none"),
    "moe_router_score_function": ("softmax", "sigmoid"),
}


def hybrid_pattern_problems(m: ModelConfig) -> list[tuple[str, str]]:
    """``(key, message)`` for every way ``m.hybrid_layer_pattern`` cannot be built for ``m``."""
    pattern, problems = m.hybrid_layer_pattern, []
    bad = sorted(set(pattern) - set(HYBRID_SYMBOLS))
    if not pattern or bad:
        symbols = ", ".join(f"{k!r} ({v})" for k, v in HYBRID_SYMBOLS.items())
        problems.append(("model.hybrid_layer_pattern", f"{pattern!r}: use one symbol per layer from {symbols}"))
    elif len(pattern) != m.num_layers:
        problems.append(
            (
                "model.num_layers",
                f"model.hybrid_layer_pattern has {len(pattern)} layers but model.num_layers={m.num_layers}",
            )
        )
    if pattern and not bad and ("E" in pattern) != (m.num_experts > 0):
        problems.append(
            (
                "model.num_experts",
                f"{m.num_experts} with pattern {pattern!r}: MoE layers ('E') need num_experts > 0 and vice versa",
            )
        )
    if m.mamba_num_heads % m.mamba_num_groups:
        problems.append(
            (
                "model.mamba_num_groups",
                f"must divide model.mamba_num_heads={m.mamba_num_heads}, got {m.mamba_num_groups}",
            )
        )
    return problems


def _check_arch(cfg: PivotRLConfig) -> None:
    """The model must be one its family's Hugging Face twin computes (the rollout engine, export
    and import all go through that twin)."""
    m = cfg.model
    _check_choice(MODEL_ARCHS, m.arch)
    hybrid = m.arch == "hybrid"
    for key, (gpt_value, hybrid_value) in _TWIN_KNOBS.items():
        want = hybrid_value if hybrid else gpt_value
        if key == "moe_router_score_function" and m.num_experts == 0:
            continue
        _check(
            getattr(m, key) == want,
            f"model.{key}",
            f"model.arch={m.arch} needs {want!r} (its Hugging Face twin, "
            f"{'Nemotron-H' if hybrid else 'Llama / Qwen3 / Qwen3-MoE'}, computes that); got {getattr(m, key)!r}",
        )
    _check(
        m.moe_router_expert_bias == (hybrid and m.num_experts > 0),
        "model.moe_router_expert_bias",
        "Nemotron-H routers (arch=hybrid) always carry an expert bias; the gpt family's never do",
    )
    _check(
        hybrid or m.moe_shared_expert_ffn_hidden_size == 0,
        "model.moe_shared_expert_ffn_hidden_size",
        "shared experts have an HF twin in the hybrid family (Nemotron-H) only; set 0 for arch=gpt",
    )
    _check(hybrid or not m.hybrid_layer_pattern, "model.hybrid_layer_pattern", "is only read with model.arch=hybrid")
    if not hybrid:
        return
    _check(not m.qk_layernorm, "model.qk_layernorm", "Nemotron-H attention has no qk layernorm: set false")
    import torch  # lazy: about a second that only these device checks need

    _check(
        not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is not None,
        "model.arch",
        "'hybrid' on a GPU needs mamba-ssm's kernels (pip install '.[gpu]' or an NGC image); the torch "
        "scan that stands in for them is registered on CPU-only machines",
    )
    for key, message in hybrid_pattern_problems(m):
        _check(False, key, message)
    p = cfg.parallel
    tp = p.tensor_model_parallel_size
    _check(
        p.pipeline_model_parallel_size == 1,
        "parallel.pipeline_model_parallel_size",
        "arch=hybrid runs at PP=1 for now (megatron splits a hybrid pattern at '|' marks, which "
        "import/export and the stage layout here do not place yet); use TP and EP",
    )
    for key in ("mamba_num_heads", "mamba_num_groups", "ffn_hidden_size"):
        _check(
            getattr(m, key) % tp == 0,
            "parallel.tensor_model_parallel_size",
            f"model.{key}={getattr(m, key)} is not divisible by TP={tp}",
        )
    _check(tp == 1 or p.sequence_parallel, "parallel.sequence_parallel", "arch=hybrid with TP > 1 needs true")


def _check_parallel(cfg: PivotRLConfig) -> None:
    """The layout must fit the model and the world; messages say what to change."""
    import torch  # lazy: about a second that only these device checks need

    m, p, a = cfg.model, cfg.parallel, cfg.algorithm
    tp, pp, ep = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.expert_model_parallel_size
    etp = tp if p.expert_tensor_parallel_size is None else p.expert_tensor_parallel_size
    _check(
        p.virtual_pipeline_model_parallel_size is None,
        "parallel.virtual_pipeline_model_parallel_size",
        "interleaved (virtual) pipeline stages are not supported yet; leave it null",
    )
    _check(
        m.num_layers % pp == 0,
        "parallel.pipeline_model_parallel_size",
        f"model.num_layers={m.num_layers} is not divisible by PP={pp}",
    )
    _check(
        m.num_attention_heads % tp == 0,
        "parallel.tensor_model_parallel_size",
        f"model.num_attention_heads={m.num_attention_heads} is not divisible by TP={tp}",
    )
    _check(
        m.num_query_groups % tp == 0,
        "parallel.tensor_model_parallel_size",
        f"model.num_query_groups={m.num_query_groups} (KV heads) is not divisible by TP={tp}; lower TP",
    )
    if m.num_experts > 0:
        _check(
            m.num_experts % ep == 0,
            "parallel.expert_model_parallel_size",
            f"model.num_experts={m.num_experts} is not divisible by EP={ep}",
        )
        _check(
            m.moe_ffn_hidden_size % etp == 0,
            "parallel.expert_tensor_parallel_size",
            f"model.moe_ffn_hidden_size={m.moe_ffn_hidden_size} is not divisible by expert TP={etp}",
        )
        _check(
            tp == 1 or p.sequence_parallel,
            "parallel.sequence_parallel",
            "MoE with TP > 1 needs parallel.sequence_parallel=true",
        )
    else:
        _check(ep == 1, "parallel.expert_model_parallel_size", "EP > 1 needs an MoE model (model.num_experts > 0)")
        _check(
            m.ffn_hidden_size % tp == 0,
            "parallel.tensor_model_parallel_size",
            f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by TP={tp}",
        )
    _check(
        not p.sequence_parallel or tp > 1,
        "parallel.sequence_parallel",
        "sequence parallelism splits activations over TP ranks: it needs TP > 1",
    )
    _check(
        not p.use_distributed_optimizer or torch.cuda.is_available(),
        "parallel.use_distributed_optimizer",
        "megatron's DistributedOptimizer needs CUDA tensors; use parallel.use_distributed_optimizer=false on CPU",
    )
    world = world_size()
    if world == 1:
        return  # one process runs the single-rank layout (runtime.Runtime.parallel)
    _check(
        world % (tp * pp) == 0,
        "parallel.tensor_model_parallel_size",
        f"world size {world} is not divisible by TP x PP = {tp * pp}; launch a multiple of {tp * pp} ranks",
    )
    _check(
        world % (etp * ep * pp) == 0,
        "parallel.expert_model_parallel_size",
        f"world size {world} is not divisible by expert-TP x EP x PP = {etp * ep * pp}",
    )
    dp = max(world // (tp * pp), 1)
    _check(
        a.prompts_per_step % dp == 0,
        "algorithm.prompts_per_step",
        f"must be divisible by the data-parallel size {dp} (world {world} / TP {tp} / PP {pp})",
    )
