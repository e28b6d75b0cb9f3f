"""A run directory under concurrent, interrupted and resumed use: one writer at a time (lock), no
marker outliving the state it describes, export refusing a checkpoint of another configuration,
each training step logged once across resumes, Ctrl-C checkpointing like SIGTERM."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pivotrl_nemo.config import load_config
from pivotrl_nemo.pipeline import STAGES, Runner
from pivotrl_nemo.pipeline.lock import LOCK_NAME, RunLockedError, lock_holder, run_dir_lock
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from pivotrl_nemo.utils.metrics import MetricsWriter, read_metrics
from pivotrl_nemo.utils.preemption import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, Preempted, PreemptionGuard

SMOKE = ["experiment=tiny", "model.tokenizer_vocab_size=0"]
HOLDER = """
import sys, time
from pivotrl_nemo.pipeline.lock import run_dir_lock
with run_dir_lock(sys.argv[1], command="the-holder-test"):
    print("locked", flush=True)
    time.sleep(300)
"""


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID"):
        if var not in extra:
            env.pop(var, None)
    return env


def _holder(run_dir: Path, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=_env(**env)
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pivotrl_nemo.cli", *args], capture_output=True, text=True, env=_env(), timeout=300
    )


def _runner(run_dir: Path, *extra: str) -> Runner:
    return Runner(load_config([*SMOKE, f"run_dir={run_dir}", *extra]))


# --------------------------------------------------------------------------- 2. the run-directory lock
def test_second_process_on_a_locked_run_dir_fails_at_once_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        t0 = time.time()
        r = _cli("extract", *SMOKE, f"run_dir={tmp_path}")
        elapsed = time.time() - t0
        assert r.returncode != 0 and elapsed < 60, (r.returncode, elapsed, r.stderr[-2000:])
        if "Traceback" not in r.stderr:  # a CLI that maps UserError prints its message and exits 2
            assert r.returncode == 2, r.stderr[-2000:]
        assert f"pid {holder.pid}" in r.stderr and "the-holder-test" in r.stderr, r.stderr[-2000:]
        assert "is in use by" in r.stderr
        assert not (tmp_path / ".stages").exists()  # it did nothing
        # in process: the same refusal; other ranks of a launch do not take the lock
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on .*the-holder-test"):
            with run_dir_lock(tmp_path):
                pass
        with run_dir_lock(tmp_path, environ={"RANK": "1"}):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_holder(tmp_path)["pid"] == holder.pid  # the dead holder's record is still there
    r = _cli("build", *SMOKE, f"run_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"taking over the lock left by pid {holder.pid}" in r.stderr
    assert (tmp_path / ".stages" / "build.json").exists()
    assert lock_holder(tmp_path) is None  # released cleanly: emptied
    # reentrant within a process: `pivotrl run` holds it across stages
    with caplog.at_level(logging.WARNING), run_dir_lock(tmp_path, command="outer"):
        with run_dir_lock(tmp_path, command="inner"):
            _runner(tmp_path).run("build")  # Runner.run takes it again inside
        assert lock_holder(tmp_path)["command"] == "outer"
    assert lock_holder(tmp_path) is None and "taking over" not in caplog.text
    assert (tmp_path / LOCK_NAME).exists()


def test_slurm_array_tasks_share_the_lock_and_exclude_plain_commands(tmp_path):
    holder = _holder(tmp_path, SLURM_ARRAY_TASK_ID="0")
    try:
        with run_dir_lock(tmp_path, environ={"SLURM_ARRAY_TASK_ID": "1"}):
            pass
        with pytest.raises(RunLockedError, match="is in use by another process"):
            with run_dir_lock(tmp_path, environ={}):
                pass
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- 3. stale markers
def _patched(name: str, fn):
    """Register stage ``name`` with another function; returns the original declaration."""
    orig = STAGES.get(name)
    STAGES.add(name, dataclasses.replace(orig, fn=fn), replace=True)
    return orig


def _fabricate_markers(r: Runner, names: list[str]) -> None:
    for n in names:
        atomic_write_json(r.layout.marker(n), {"fingerprint": r.fingerprint(n), "seconds": 0.0, "summary": {}})


def test_interrupted_rerun_under_another_config_removes_its_and_downstream_markers(tmp_path):
    a = _runner(tmp_path)
    a.run("build")
    a.run("extract")
    _fabricate_markers(a, ["sft", "profile", "filter", "train", "eval", "report"])  # a finished run
    markers = tmp_path / ".stages"

    def interrupted(ctx):
        orig.fn(ctx)  # rewrites the candidates under the new config ...
        raise RuntimeError("interrupted midway")  # ... and dies before its marker

    orig = _patched("extract", interrupted)
    try:
        with pytest.raises(RuntimeError, match="interrupted midway"):
            _runner(tmp_path, "verifier.name=strict").run("extract")
    finally:
        STAGES.add("extract", orig, replace=True)
    assert sorted(p.stem for p in markers.glob("*.json")) == ["build", "sft"]  # upstream / unrelated kept

    calls = []
    orig = _patched("extract", lambda ctx: calls.append(1) or orig.fn(ctx))
    try:
        assert _runner(tmp_path).run("extract")  # the original config: it must run again, not skip
    finally:
        STAGES.add("extract", orig, replace=True)
    assert calls == [1] and (markers / "extract.json").exists()


def test_rerun_that_discards_state_removes_markers_before_discarding(tmp_path):
    r = _runner(tmp_path)
    _fabricate_markers(r, ["build", "sft", "extract", "profile", "filter"])
    train = tmp_path / "train"
    train.mkdir()
    (train / ".fingerprint").write_text("old\n")
    (train / "metrics.jsonl").write_text('{"step": 1}\n')
    for n in ("train", "eval", "report"):
        atomic_write_json(r.layout.marker(n), {"fingerprint": "old", "seconds": 0.0, "summary": {}})
    seen = {}

    def dies(ctx):
        seen["markers"] = sorted(p.stem for p in ctx.layout.markers.glob("*.json"))
        raise KeyboardInterrupt

    orig = _patched("train", dies)
    try:
        with pytest.raises(KeyboardInterrupt):
            r.run("train")
    finally:
        STAGES.add("train", orig, replace=True)
    assert not (train / "metrics.jsonl").exists()  # its state was discarded ...
    assert seen["markers"] == ["build", "extract", "filter", "profile", "sft"]  # ... and no marker claims it


def test_export_refuses_a_checkpoint_stamped_under_another_fingerprint(tmp_path):
    from pivotrl_nemo.pipeline.hf_commands import export_stage

    cfg = load_config([*SMOKE, f"run_dir={tmp_path}"])
    out = tmp_path / "hf"
    train = tmp_path / "train"
    (train / "checkpoint").mkdir(parents=True)
    (train / ".fingerprint").write_text("bbbb2222\n")
    with pytest.raises(UserError, match=r"did not finish .*bbbb2222.*re-run `pivotrl train`"):
        export_stage(cfg, tmp_path, "train", out)  # no marker: the stage never finished
    atomic_write_json(tmp_path / ".stages" / "train.json", {"fingerprint": "aaaa1111", "seconds": 1.0, "summary": {}})
    with pytest.raises(UserError, match=r"bbbb2222.*aaaa1111.*re-run `pivotrl train`"):
        export_stage(cfg, tmp_path, "train", out)
    assert not out.exists()
    (train / ".fingerprint").write_text("aaaa1111\n")  # consistent: the check passes, the empty checkpoint fails
    with pytest.raises(FileNotFoundError, match="no train checkpoint"):
        export_stage(cfg, tmp_path, "train", out)


def test_eval_refuses_a_train_checkpoint_stamped_under_another_fingerprint(tmp_path):
    r = _runner(tmp_path)
    (tmp_path / "train" / "checkpoint").mkdir(parents=True)
    (tmp_path / "train" / ".fingerprint").write_text("bbbb2222\n")  # what an interrupted re-run leaves
    atomic_write_json(r.layout.marker("train"), {"fingerprint": "aaaa1111", "seconds": 1.0, "summary": {}})
    with pytest.raises(UserError, match=r"bbbb2222.*aaaa1111.*re-run `pivotrl train`.*evaluate again"):
        STAGES.get("eval").fn(r.context())  # before it samples from pi_0 or reads a candidate
    assert not r.layout.eval_results.exists()


# --------------------------------------------------------------------------- 4./5. metrics, SIGINT (in process)
def test_metrics_resume_keeps_each_step_once_in_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        for step in range(1, 6):
            mw.log(step, {"x": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "x"')  # a torn line of a killed run
    with MetricsWriter(tmp_path) as mw:
        mw.resume(3)  # resumed from the checkpoint of step 3
        for step in range(4, 8):
            mw.log(step, {"x": 10.0 * step})
    assert _steps_of(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7]
    assert [r["x"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 40, 50, 60, 70]
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard" / "metrics"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60), (7, 70)]


class _ReachedPrevious(Exception):
    """Raised by the handler a test installs before the guard (stands in for KeyboardInterrupt, which
    would stop the whole pytest session if a broken guard let the first Ctrl-C through)."""


def _previous(signum, frame):
    raise _ReachedPrevious(signum)


def test_sigint_is_recorded_once_then_aborts():
    old = {sig: signal.signal(sig, _previous) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with PreemptionGuard() as g:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert g.requested and g.signum == signal.SIGINT and g.exit_code == INTERRUPTED_EXIT_CODE == 130
            with pytest.raises(_ReachedPrevious):  # the second Ctrl-C goes to the previous handler, at once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is _previous and signal.getsignal(signal.SIGTERM) is _previous
        with PreemptionGuard() as g:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
            time.sleep(0.01)
            assert g.signum == signal.SIGTERM and g.exit_code == PREEMPTED_EXIT_CODE == 143
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert Preempted("x", exit_code=130).exit_code == 130 and Preempted("x").exit_code == 143


# --------------------------------------------------------------------------- 4./5. real training processes
WORKER = [sys.executable, str(Path(__file__).with_name("checkpoint_resume_worker.py"))]
STEPS = 6
TRAIN = [
    "experiment=tiny",
    "data.max_trajectories=2",
    "data.split_fractions={sft: 1.0, rl: 0.0, val: 0.0, test: 0.0}",
    "sft.steps=4",
    f"algorithm.steps={STEPS}",
    "algorithm.prompts_per_step=4",
    "algorithm.group_size=4",
    "algorithm.save_every=2",
    "algorithm.keep_last=2",
    "rollout.batch_size=16",
]


def _latest_step(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "train" / "checkpoint" / "latest").read_text().strip().removeprefix("step_"))
    except (OSError, ValueError):
        return None


def _steps(run_dir: Path) -> list[int]:
    return _steps_of(run_dir / "train" / "metrics.jsonl")


def _steps_of(path: Path) -> list[int]:
    """The step of every row of a metrics.jsonl, in file order (torn lines skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass
    return out


def _worker(run_dir: Path) -> subprocess.Popen:
    # SIGINT at its default (a shell may start background jobs with it ignored)
    return subprocess.Popen(
        WORKER + [str(run_dir), *TRAIN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 400
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before {what}: " + proc.stderr.read()[-3000:]
    assert ready(), f"timed out waiting for {what}"


@pytest.mark.timeout(1200)
def test_ctrl_c_twice_aborts_then_sigkill_and_ctrl_c_resume_log_each_step_once_and_exit_130(tmp_path):
    run_dir = tmp_path / "run"
    r = _cli("run", *TRAIN, f"run_dir={run_dir}", "stages=[build,extract,sft]")
    assert r.returncode == 0, r.stderr[-3000:]
    atomic_write_jsonl(run_dir / "pivots.jsonl", read_jsonl(run_dir / "candidates" / "sft.jsonl")[:4])

    # 0. Ctrl-C twice during step 2 (a checkpoint step: save_every=2): the second one aborts at
    #    once, so the step is never finished nor checkpointed (waiting would save step 2, exit 130)
    proc = _worker(run_dir)
    _wait(proc, lambda: _steps(run_dir) == [1], "step 1")
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, (proc.returncode, err[-3000:])
    assert _latest_step(run_dir) is None and not (run_dir / "train" / "PREEMPTED").exists()
    assert _steps(run_dir) == [1] and "checkpoint saved" not in err

    # 1. SIGKILL once a step after the first checkpoint is logged: the killed run logged more
    #    than it checkpointed
    proc = _worker(run_dir)
    _wait(proc, lambda: (_latest_step(run_dir) or STEPS) < max(_steps(run_dir), default=0), "a step past a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(run_dir)
    assert killed_at is not None and killed_at < max(_steps(run_dir)) < STEPS, (killed_at, _steps(run_dir))

    # 2. restart; Ctrl-C once it has logged a step of its own (after it rewrote the log without
    #    the killed run's extra steps, or appended to it): it checkpoints that step and exits 130
    metrics, logged = run_dir / "train" / "metrics.jsonl", len(_steps(run_dir))
    inode = metrics.stat().st_ino

    def own_step() -> bool:
        steps = _steps(run_dir)
        return len(steps) > logged or (metrics.stat().st_ino != inode and max(steps, default=0) > killed_at)

    proc = _worker(run_dir)
    _wait(proc, own_step, "a step after the resume")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"at step {killed_at + 1}" in err, err[-3000:]
    interrupted_at = int((run_dir / "train" / "PREEMPTED").read_text())
    assert killed_at < interrupted_at < STEPS and _latest_step(run_dir) == interrupted_at
    assert max(_steps(run_dir)) == interrupted_at

    # 3. restart to the end: every step exactly once
    proc = _worker(run_dir)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"at step {interrupted_at + 1}" in err and not (run_dir / "train" / "PREEMPTED").exists()
    assert _steps(run_dir) == list(range(1, STEPS + 1))
    assert json.loads((run_dir / "train" / "trainer_state.json").read_text())["step"] == STEPS

    # 4. `pivotrl export` of this real checkpoint: refused while the stamp next to it is not the
    #    finished train stage's fingerprint (what an interrupted re-run under another configuration
    #    left behind while stale markers survived), exported once they agree
    atomic_write_json(run_dir / ".stages" / "train.json", {"fingerprint": "aaaa1111", "seconds": 1.0, "summary": {}})
    (run_dir / "train" / ".fingerprint").write_text("bbbb2222\n")
    out = tmp_path / "hf"
    export = ["export", *TRAIN, f"run_dir={run_dir}", "export.checkpoint=train", f"export.out={out}"]
    r = _cli(*export)
    assert r.returncode != 0 and "bbbb2222" in r.stderr and "aaaa1111" in r.stderr, (r.returncode, r.stderr[-3000:])
    assert "re-run `pivotrl train`" in r.stderr and not out.exists()
    (run_dir / "train" / ".fingerprint").write_text("aaaa1111\n")
    r = _cli(*export)
    assert r.returncode == 0 and (out / "config.json").is_file(), r.stderr[-3000:]

    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run_dir / "train" / "tensorboard" / "metrics"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))
