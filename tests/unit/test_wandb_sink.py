"""The W&B metrics sink (``logging.wandb``), on the real wandb package in offline mode: what it
writes is read back from the offline run's ``.wandb`` transaction log with wandb's own protobuf
``Record`` (wandb 0.31 has no Python reader of that file; its framing is LevelDB's log format)."""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.config.schema import LoggingConfig, PivotRLConfig, WandbConfig
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.metrics import MetricsWriter, read_metrics

wandb = pytest.importorskip("wandb")


@pytest.fixture(scope="module", autouse=True)
def _stop_wandb_service():
    yield
    wandb.teardown()  # the wandb-core service process started by the first run of this module


@pytest.fixture
def cfg(tmp_path, monkeypatch) -> PivotRLConfig:
    """A resolved config whose W&B sink is on, offline, with nothing read from or written to ~."""
    for k in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")  # no system-metrics sampler
    monkeypatch.setenv("WANDB__DISABLE_META", "true")
    monkeypatch.setenv("WANDB__SAVE_REQUIREMENTS", "false")  # no pip-freeze of the venv per run
    wb = WandbConfig(enabled=True, tags=["unit"])
    return PivotRLConfig(experiment="exp", run_dir=str(tmp_path / "run"), logging=LoggingConfig(wandb=wb))


def _writer(cfg: PivotRLConfig) -> MetricsWriter:
    return MetricsWriter(Path(cfg.run_dir) / "train", wandb=cfg.logging.wandb, run_config=cfg)


def _records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte W&B header, then LevelDB log records
    (32 KiB blocks; each chunk: crc32c u32, length u16, type u8 = full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 0 or pos > len(data):  # zero padding, or a chunk still being written
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _offline_runs(cfg: PivotRLConfig, run_id: str) -> list[Path]:
    """The offline-run directories of ``run_id`` (one per writer process), oldest first."""
    runs = sorted((Path(cfg.run_dir) / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert runs and all((r / f"run-{run_id}.wandb").is_file() for r in runs)
    for r in runs:  # finish() returns before wandb-core has flushed the file's tail
        deadline = time.monotonic() + 10
        while [x.WhichOneof("record_type") for x in _records(r / f"run-{run_id}.wandb")][-1:] != ["exit"]:
            assert time.monotonic() < deadline, f"{r}: no exit record"
            time.sleep(0.05)
    return runs


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb writes a key with '/' as nested_key


def _history(run_dir: Path, run_id: str) -> list[tuple[int, dict]]:
    out = []
    for rec in _records(run_dir / f"run-{run_id}.wandb"):
        if rec.WhichOneof("record_type") == "history":
            items = {_key(i): json.loads(i.value_json) for i in rec.history.item}
            out.append((rec.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return out


def _run_record(run_dir: Path, run_id: str):
    return next(r.run for r in _records(run_dir / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run")


def _state(cfg: PivotRLConfig) -> dict:
    return json.loads((Path(cfg.run_dir) / "train" / "metrics.wandb.json").read_text())


def test_offline_run_holds_the_logged_scalars_and_the_config(cfg):
    with _writer(cfg) as mw:
        for step in (1, 2, 3):
            mw.log(step, {"train/loss": 1.0 / step, "train/skipped": None, "train/inf": math.inf})
    run_id = _state(cfg)["id"]
    (run,) = _offline_runs(cfg, run_id)
    assert _history(run, run_id) == [
        (s, {"train/loss": pytest.approx(1.0 / s), "train/inf": math.inf}) for s in (1, 2, 3)
    ]
    r = _run_record(run, run_id)
    assert (r.run_id, r.project, r.display_name, r.run_group, list(r.tags)) == (
        run_id,
        "pivotrl",
        "exp/train",
        "exp",
        ["unit"],
    )
    config = {_key(i): json.loads(i.value_json) for i in r.config.update}
    assert config["experiment"] == "exp" and config["logging"]["wandb"]["mode"] == "offline"
    assert config["algorithm"]["steps"] == cfg.algorithm.steps
    assert _state(cfg) == {"id": run_id, "last_step": 3}
    assert [row["step"] for row in read_metrics(Path(cfg.run_dir) / "train" / "metrics.jsonl")] == [1, 2, 3]


def test_resumed_writer_continues_the_same_run_and_sends_each_step_once(cfg):
    with _writer(cfg) as mw:  # a run that logged steps 1..5, then was killed; last checkpoint: step 3
        mw.resume(0)
        for step in range(1, 6):
            mw.log(step, {"x": float(step)})
    run_id = _state(cfg)["id"]
    with _writer(cfg) as mw:
        mw.resume(3)
        for step in range(4, 8):
            mw.log(step, {"x": 10.0 * step})
    first, second = _offline_runs(cfg, run_id)  # one more offline part of the same run
    assert _run_record(second, run_id).run_id == run_id
    steps = _history(first, run_id) + _history(second, run_id)
    # W&B's steps must increase: 4 and 5 keep the killed run's rows, 6 and 7 are the resumed run's
    assert [(s, h["x"]) for s, h in steps] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 60), (7, 70)]
    assert [r["x"] for r in read_metrics(Path(cfg.run_dir) / "train" / "metrics.jsonl")] == [1, 2, 3, 40, 50, 60, 70]
    assert _state(cfg) == {"id": run_id, "last_step": 7}

    with _writer(cfg) as mw:  # told of no resume, back at step 1: a re-run from the start
        mw.log(1, {"x": -1.0})
    new_id = _state(cfg)["id"]
    assert new_id != run_id and new_id.split("-")[0] == run_id.split("-")[0]  # same directory, new run
    (fresh,) = _offline_runs(cfg, new_id)
    assert [(s, h["x"]) for s, h in _history(fresh, new_id)] == [(1, -1)]


def test_disabled_sink_imports_and_writes_nothing(cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would fail
    off = replace(cfg, logging=LoggingConfig(wandb=replace(cfg.logging.wandb, enabled=False)))
    for w in (off.logging.wandb, None):
        with MetricsWriter(Path(off.run_dir) / "train", wandb=w, run_config=off) as mw:
            mw.log(1, {"x": 1.0})
    assert not (Path(off.run_dir) / "wandb").exists()
    assert not (Path(off.run_dir) / "train" / "metrics.wandb.json").exists()
    assert read_metrics(Path(off.run_dir) / "train" / "metrics.jsonl") == [{"step": 1, "x": 1.0}]


def test_enabled_without_wandb_fails_at_construction_and_at_startup(cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"`pip install wandb`, or set logging\.wandb\.enabled=false"):
        _writer(cfg)
    assert not (Path(cfg.run_dir) / "train").exists()  # before anything was written
    with pytest.raises(ConfigError, match=r"'logging\.wandb\.enabled'.*pip install wandb"):
        load_config(["logging.wandb.enabled=true"])


def test_logging_keys_load_typed_and_mode_is_a_closed_choice():
    c = load_config(["logging.wandb.enabled=true", "logging.wandb.mode=online", "logging.wandb.tags=[a,b]"])
    assert (c.logging.wandb.enabled, c.logging.wandb.mode, c.logging.wandb.tags) == (True, "online", ["a", "b"])
    assert load_config([]).logging.wandb == WandbConfig()
    with pytest.raises(ConfigError, match=r"logging\.wandb\.mode"):
        load_config(["logging.wandb.mode=cloud"])
