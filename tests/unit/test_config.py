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
