import pytest

from pivotrl_nemo.cli import main
from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.config.schema import PivotRLConfig


def test_defaults_compose_into_typed_config():
    cfg = load_config([])
    assert isinstance(cfg, PivotRLConfig)
    assert cfg.verifier.name == "bfcl_state" and cfg.model.num_experts == 4


def test_quickstart_experiment_composes():
    cfg = load_config(["experiment=quickstart"])
    assert cfg.run_dir == "runs/quickstart" and cfg.profile.k == 8


def test_override_is_typed():
    assert load_config(["algorithm.steps=7"]).algorithm.steps == 7


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.no_such_key=1", "model.no_such_key"),
        ("algorithm.steps=abc", "algorithm.steps"),
        ("filter.lambda_diff=1.5", "filter.lambda_diff"),
        ("algorithm.group_size=1", "algorithm.group_size"),
        ("verifier.name=fuzzy", "verifier.name"),
        ("model.num_query_groups=3", "model.num_query_groups"),
        ("data.source=jsonl", "data.path"),
    ],
)
def test_bad_keys_fail_at_startup_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config([override])


def test_cli_reports_config_error(capsys):
    assert main(["show-config", "profile.k=1"]) == 2
    assert "profile.k" in capsys.readouterr().err


def test_vllm_engine_refused_without_gpu_and_vllm():
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        pytest.skip("this machine can run vLLM; the refusal is for CPU machines")
    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(["rollout=vllm"])


def test_vllm_tensor_parallel_across_ranks_is_refused_naming_the_key(monkeypatch):
    """Under torchrun a vLLM TP group spans ranks that must all call generate with the same prompts;
    the rollouts sample on each model-parallel group's first rank only, so this would hang."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as e:
        load_config(["rollout=vllm", "rollout.vllm.tensor_parallel_size=2"])
    msg = str(e.value)
    assert "config key 'rollout.vllm.tensor_parallel_size'" in msg
    assert "same prompts" in msg and "rollout.vllm.tensor_parallel_size=1" in msg


def test_vllm_tensor_parallel_on_one_rank_is_not_the_layout_error(monkeypatch):
    """One process has no SPMD group to hang: only the device check (on CPU) may refuse it."""
    import importlib.util

    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    overrides = ["rollout=vllm", "rollout.vllm.tensor_parallel_size=2"]
    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        load_config(overrides)
        return
    with pytest.raises(ConfigError, match="config key 'rollout.engine'"):
        load_config(overrides)


def test_grouped_gemm_experts_are_refused_because_weight_sync_cannot_map_them():
    """TE's grouped-GEMM expert names have no HF mapping: refuse at start-up, not at the first sync."""
    from pivotrl_nemo.models.megatron.hf.mapping import megatron_tensor_kind

    with pytest.raises(ValueError, match="grouped-GEMM"):  # what the first weight sync would hit
        megatron_tensor_kind("decoder.layers.0.mlp.experts.linear_fc1.weight0")
    for impl in ("transformer_engine", "auto", "local"):
        with pytest.raises(ConfigError) as e:
            load_config(["model.moe_grouped_gemm=true", f"model.transformer_impl={impl}"])
        assert "config key 'model.moe_grouped_gemm'" in str(e.value)
        assert "model.moe_grouped_gemm=false" in str(e.value) and "linear_fc1.weight{i}" in str(e.value)


# ------------------------------------------------------------------ start-up validation of values


@pytest.mark.parametrize(
    "override,message",
    [
        ("algorithm.steps=0", "config key 'algorithm.steps': must be >= 1, got 0"),
        ("algorithm.steps=-5", "config key 'algorithm.steps': must be >= 1, got -5"),
        ("algorithm.optim.lr=-1", "config key 'algorithm.optim.lr': must be > 0, got -1.0"),
        ("sft.optim.lr=0", "config key 'sft.optim.lr': must be > 0, got 0.0"),
        ("algorithm.clip_low=5", "config key 'algorithm.clip_low': must be in [0, 1), got 5.0"),
        ("algorithm.clip_high=-0.1", "config key 'algorithm.clip_high': must be in [0, 1), got -0.1"),
        ("data.max_trajectories=-1", "config key 'data.max_trajectories': must be >= 0, got -1"),
        (
            "rollout.vllm.gpu_memory_utilization=1.5",
            "config key 'rollout.vllm.gpu_memory_utilization': must be in (0, 1]",
        ),
        ("parallel.expert_tensor_parallel_size=0", "config key 'parallel.expert_tensor_parallel_size': must be >= 1"),
        (
            "model.num_query_groups=0",
            "config key 'model.num_query_groups': must be >= 1, got 0",
        ),  # was ZeroDivisionError
        ("rollout.sampling.temperature=nan", "config key 'rollout.sampling.temperature': must be > 0, got nan"),
        ("profile.k=1", "config key 'profile.k': must be >= 2, got 1 (a variance needs at least 2 samples)"),
        ("log_level=LOUD", "config key 'log_level': use one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'; got 'LOUD'"),
        ("log_level=WARNIN", "got 'WARNIN' (did you mean 'WARNING'?)"),
        ("+foo=1", "config key 'foo': no such key"),
        ("+algorithm.stpes=5", "config key 'algorithm.stpes': no such key (did you mean 'algorithm.steps'?)"),
        ("++algorithm.stpes=5", "config key 'algorithm.stpes': no such key (did you mean 'algorithm.steps'?)"),
        ("algorithm.stpes=5", "config key 'algorithm.stpes': no such key (did you mean 'algorithm.steps'?)"),
        ("+model.rotary.base=2", "config key 'model.rotary': no such key"),
    ],
)
def test_out_of_range_and_unknown_values_are_refused_at_startup(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert message in str(e.value)


@pytest.mark.parametrize(
    "override",
    [
        "algorithm.steps=1",
        "algorithm.clip_low=0",
        "filter.lambda_diff=1",
        "data.max_trajectories=0",
        "sft.steps=0",
        "eval.temperature=0",
        "seed=-3",
        "log_level=DEBUG",
        "++algorithm.steps=3",
        "data.split_fractions={sft: 0.5, rl: 0.5, test: 0.0}",
    ],
)
def test_values_at_the_bounds_and_legitimate_additions_pass(override):
    load_config([override])


def _numeric_fields(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from _numeric_fields(t, f"{prefix}{f.name}.")
        elif t in (int, float, typing.Optional[int], typing.Optional[float]):
            yield prefix + f.name, f


def test_every_numeric_field_declares_its_range():
    fields = dict(_numeric_fields(PivotRLConfig))
    assert "algorithm.steps" in fields and "rollout.vllm.sleep_level" in fields
    unbounded = {"filter.min_variance"}  # on purpose: a negative value keeps zero-variance candidates
    missing = [
        k for k, f in fields.items() if not k.endswith("seed") and k not in unbounded and not f.metadata.get("bounds")
    ]
    assert missing == []  # seeds are any int; every other number says what it may be


def test_every_experiment_and_preset_passes_the_field_checks():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf"
    for group in ("experiment", "model", "rollout", "domain"):  # parallel presets need their model sizes
        for p in sorted((conf / group).glob("*.yaml")):
            if group == "rollout" and p.stem == "vllm":
                continue  # needs a GPU (tested above)
            load_config([f"{group}={p.stem}", *(["data.path=t.jsonl"] if group == "domain" else [])])
