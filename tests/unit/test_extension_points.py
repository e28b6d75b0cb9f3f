"""A verifier, a domain and a stage registered from outside the package run through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pivotrl_nemo.cli import main
from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.pipeline import STAGES
from pivotrl_nemo.registry import DOMAINS, VERIFIERS

PLUGINS = Path(__file__).with_name("plugins")
RUN = [
    "stages=[build,extract,toy_score]",
    "data.source=arith",
    "model.tokenizer_vocab_size=0",
    "data.split_fractions={sft: 0.5, rl: 0.5, val: 0.0, test: 0.0}",
    "eval.split=val",
]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    import toy_plugin

    yield toy_plugin
    for reg, name in ((DOMAINS, "arith"), (VERIFIERS, "toy_parity"), (STAGES, "toy_score")):
        reg.remove(name)
    sys.modules.pop("toy_plugin", None)


def test_toy_domain_verifier_and_stage_run_through_the_cli(toy, tmp_path, capsys):
    assert main(["run", f"run_dir={tmp_path}", *RUN]) == 0
    scores = json.loads((tmp_path / "toy_scores.json").read_text())
    calls = {k: v for k, v in scores.items() if k.endswith("#0")}  # turn 0 is the add call
    assert len(calls) == 10 and len(scores) == 20
    assert {k for k, v in calls.items() if v == 1.0} == {f"toy/{i}#0" for i in range(0, 10, 2)}
    marker = json.loads((tmp_path / ".stages" / "toy_score.json").read_text())
    assert marker["summary"] == {"scored": 20, "passed": 5.0}
    # the domain's default verifier was chosen, and the resolved config names it
    assert "name: toy_parity" in (tmp_path / "config.yaml").read_text()
    assert main(["toy_score", "--help"]) == 0
    assert "needs: extract" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "toy_score" in capsys.readouterr().out


def test_unknown_names_suggest_the_closest_registered_one(toy):
    with pytest.raises(ConfigError, match="verifier.name.*did you mean 'toy_parity'"):
        load_config(["verifier.name=toy_parit"])
    with pytest.raises(ConfigError, match="data.source.*did you mean 'arith'"):
        load_config(["data.source=arth"])
    with pytest.raises(ConfigError, match="stages.*toy_scor"):
        from pivotrl_nemo.pipeline.stage import run_chain

        run_chain(load_config(["stages=[build,toy_scor]"]))


def test_plugins_key_loads_extensions_in_a_fresh_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{PLUGINS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run(
        [sys.executable, "-m", "pivotrl_nemo.cli", "run", f"run_dir={tmp_path}", "plugins=[toy_plugin]", *RUN],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(json.loads((tmp_path / "toy_scores.json").read_text())) == 20
