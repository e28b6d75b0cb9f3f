"""What the user sees when something goes wrong: one message and an exit code, never a traceback
(2: a problem the user can fix; 1: any other failure; 130: Ctrl-C; a preemption's own code);
``--debug`` / PIVOTRL_DEBUG=1 re-raise. Also: every stage's and command's ``--help``, and an
unknown command that creates nothing."""

from __future__ import annotations

import errno
import json

import pytest
from bfcl_rows import pivot_rows, trajectory

from pivotrl_nemo import pipeline
from pivotrl_nemo.cli import main
from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.pipeline import COMMANDS, STAGES, Command, Runner, StageOrderError
from pivotrl_nemo.pipeline.stages.filter import NoPivotsError
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.preemption import Preempted

SMOKE = ["experiment=tiny", "model.tokenizer_vocab_size=0"]


def _clean(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("PIVOTRL_DEBUG", raising=False)


def _fail_with(monkeypatch, exc: BaseException) -> None:
    """Make every stage run raise ``exc`` (what escapes ``Runner.run`` reaches the CLI)."""

    def boom(self, stage, force=False):
        raise exc

    monkeypatch.setattr(pipeline.Runner, "run", boom)


# ------------------------------------------------------------------------- 7: errors reach the user


def test_error_types_are_user_errors():
    for cls in (ConfigError, StageOrderError, NoPivotsError):
        assert issubclass(cls, UserError), cls


def test_bad_trajectory_file_on_build_is_one_message_exit_2(tmp_path, capsys):
    bad = tmp_path / "traj.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    rc = main(["build", "domain=jsonl", f"data.path={bad}", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2
    _clean(err)
    assert f"error: {bad}:1: id:" in err


def test_missing_upstream_stage_is_one_message_exit_2(tmp_path, capsys):
    rc = main(["filter", *SMOKE, f"run_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2
    _clean(err)
    assert "stage 'filter' needs stage 'profile' first" in err and "--debug" not in err


def test_forced_failure_is_one_line_exit_1_and_goes_to_the_log(tmp_path, capsys, monkeypatch):
    _fail_with(monkeypatch, RuntimeError("boom\nsecond line"))
    rc = main(["build", *SMOKE, f"run_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 1
    _clean(err)
    assert "error: RuntimeError: boom second line" in err and "--debug" in err
    log = (tmp_path / "pivotrl.log").read_text()
    assert "error: RuntimeError: boom" in log and "Traceback" in log  # the log keeps the traceback


@pytest.mark.parametrize(
    "exc,text",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/x/y"), "permission denied: /x/y"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/ckpt"), "no space left on device writing /x/ckpt"),
        (UserError("fix this"), "error: fix this"),
    ],
)
def test_os_and_user_errors_exit_2(tmp_path, capsys, monkeypatch, exc, text):
    _fail_with(monkeypatch, exc)
    assert main(["build", *SMOKE, f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    _clean(err)
    assert text in err and "--debug" not in err


def test_missing_file_the_user_named_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc = main(["build", "domain=jsonl", f"data.path={missing}", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2
    _clean(err)
    assert str(missing) in err


def test_ctrl_c_exits_130_and_preemption_returns_its_code(tmp_path, capsys, monkeypatch):
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert main(["build", *SMOKE, f"run_dir={tmp_path}"]) == 130
    err = capsys.readouterr().err
    _clean(err)
    assert "interrupted; re-run the same command to resume" in err
    _fail_with(monkeypatch, Preempted("checkpointed at step 3", exit_code=130))
    assert main(["build", *SMOKE, f"run_dir={tmp_path}"]) == 130
    _fail_with(monkeypatch, Preempted("checkpointed at step 3"))
    assert main(["build", *SMOKE, f"run_dir={tmp_path}"]) == 143


def test_debug_flag_anywhere_or_env_shows_the_traceback(tmp_path, monkeypatch):
    _fail_with(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(["build", "--debug", *SMOKE, f"run_dir={tmp_path}"])  # Hydra never sees --debug
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "build", *SMOKE, f"run_dir={tmp_path}"])
    monkeypatch.setenv("PIVOTRL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["build", *SMOKE, f"run_dir={tmp_path}"])


def test_command_failures_are_caught_too(capsys, monkeypatch):
    def fail(args: list[str]) -> int:
        raise RuntimeError("command broke")

    COMMANDS.add("toy-fail", Command("toy-fail", fail, "fails"))
    try:
        assert main(["toy-fail"]) == 1
        err = capsys.readouterr().err
        _clean(err)
        assert "error: RuntimeError: command broke" in err
        with pytest.raises(RuntimeError):
            main(["toy-fail", "--debug"])
    finally:
        COMMANDS.remove("toy-fail")


def test_config_error_still_exits_2(capsys):
    assert main(["show-config", "algorithm.steps=0"]) == 2
    err = capsys.readouterr().err
    _clean(err)
    assert "config key 'algorithm.steps': must be >= 1, got 0" in err


# --------------------------------------------------------------------------------- 8: --help


@pytest.mark.parametrize("name", [*STAGES.names(), *COMMANDS.names(), "run"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_for_every_stage_and_command(name, flag, capsys):
    assert main([name, flag]) == 0
    out, err = capsys.readouterr()
    first = out.split("\n")[0]
    assert first.startswith(f"usage: pivotrl {name}") and "usage:" not in first[len("usage:") :], first
    assert err == ""


def test_help_after_overrides(capsys):
    assert main(["run", "experiment=tiny", "--help"]) == 0
    out, err = capsys.readouterr()
    assert "usage: pivotrl run" in out and err == ""


# ---------------------------------------------------------------------- 9: unknown command


def test_unknown_command_creates_nothing_and_suggests(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["frobnicate"]) == 2
    assert main(["trian", "algorithm.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "(did you mean 'train'?)" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ 12: no pivots


def _profiled_run_dir(tmp_path, means: list[float], k: int = 4) -> list[str]:
    """A run dir whose profile stage is done (marker matching this config) with these pass rates."""
    overrides = [*SMOKE, f"run_dir={tmp_path}", f"profile.k={k}"]
    runner = Runner(load_config(overrides))
    rows = pivot_rows(trajectory("multi_turn_base_2"))
    assert len(rows) >= len(means)
    out = []
    for row, mean in zip(rows, means):
        rewards = [1.0] * round(mean * k) + [0.0] * (k - round(mean * k))
        var = sum((r - mean) ** 2 for r in rewards) / k
        cats = ["pass" if r else "call_expected" for r in rewards]
        out.append(
            {
                **row,
                "profile": {
                    "k": k,
                    "rewards": rewards,
                    "mean": mean,
                    "variance": var,
                    "categories": cats,
                    "policy_id": "pi0:sft",
                },
            }
        )
    layout = runner.layout
    layout.profiled.parent.mkdir(parents=True, exist_ok=True)
    layout.profiled.write_text("".join(json.dumps(r) + "\n" for r in out))
    layout.marker("profile").parent.mkdir(parents=True, exist_ok=True)
    marker = {"fingerprint": runner.fingerprint("profile"), "seconds": 0.0, "summary": {}}
    layout.marker("profile").write_text(json.dumps(marker))
    return overrides


def test_no_pivots_is_a_clean_stop_saying_what_pi0_did(tmp_path, capsys):
    overrides = _profiled_run_dir(tmp_path, [0.0, 0.0, 0.0, 1.0])
    assert main(["filter", *overrides]) == 2
    err = capsys.readouterr().err
    _clean(err)
    assert "the filter kept no pivots of 4 candidates" in err
    assert "failed all 4 samples on 3, passed all 4 on 1, and 0 were too easy" in err
    assert "too weak" in err and "sft.steps" in err and "profile.k" in err
    assert json.loads((tmp_path / "filter_summary.json").read_text())["pivots"] == 0


def test_no_pivots_message_for_a_too_strong_pi0():
    from pivotrl_nemo.pipeline.stages.filter import no_pivots_message

    summary = {"candidates": 5, "dropped": {"zero_variance_all_pass": 3, "too_easy": 2}}
    msg = no_pivots_message(summary, 8, 0.6, "s.json")
    assert "passed all 8 on 3, and 2 were too easy" in msg and "too strong" in msg and "filter.lambda_diff" in msg


# ---------------------------------------------------------- more edges of the same guarantees


def test_file_not_found_of_an_internal_path_is_a_failure_exit_1(tmp_path, capsys, monkeypatch):
    _fail_with(monkeypatch, FileNotFoundError(errno.ENOENT, "No such file", "/opt/internal/thing"))
    assert main(["build", *SMOKE, f"run_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    _clean(err)
    assert err.startswith("error: FileNotFoundError: ") and "--debug" in err


def test_file_not_found_under_a_user_given_directory_is_exit_2(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "ckpt"
    _fail_with(monkeypatch, FileNotFoundError(errno.ENOENT, "No such file", str(ckpt / "step_1" / "meta.json")))
    assert main(["sft", *SMOKE, f"run_dir={tmp_path / 'run'}", f"model.init_checkpoint={ckpt}"]) == 2
    assert f"(from `model.init_checkpoint={ckpt}`); check the path" in capsys.readouterr().err


def test_a_checkpointed_stop_keeps_its_code_under_debug(tmp_path, monkeypatch):
    _fail_with(monkeypatch, Preempted("checkpointed at step 3", exit_code=143))
    monkeypatch.setenv("PIVOTRL_DEBUG", "1")  # not a crash: no traceback to show
    assert main(["train", *SMOKE, f"run_dir={tmp_path}"]) == 143


def test_user_errors_from_commands_exit_2(capsys):
    def locked(args: list[str]) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", args[0])

    COMMANDS.add("toy-locked", Command("toy-locked", locked, "raises PermissionError"))
    try:
        assert main(["toy-locked", "/srv/locked"]) == 2
        assert capsys.readouterr().err.startswith("error: permission denied: /srv/locked: ")
    finally:
        COMMANDS.remove("toy-locked")


def test_unknown_command_in_a_fresh_process_writes_nothing(tmp_path):
    import os
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "pivotrl_nemo.cli", "frobnicate", "--debug"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2 and r.stderr.startswith("error: unknown command 'frobnicate'")
    assert list(tmp_path.iterdir()) == []  # no runs/default/pivotrl.log


def test_help_and_config_errors_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in [*STAGES.names(), "run"]:
        assert main([name, "experiment=tiny", "--help", "--debug"]) == 0
    assert main(["train", "algorithm.steps=0"]) == 2
    assert capsys.readouterr().err == "error: config key 'algorithm.steps': must be >= 1, got 0\n"
    assert main(["run", "+algorithm.stpes=5"]) == 2
    assert "did you mean 'algorithm.steps'?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
