"""Distributed checkpoints of a ``MegatronPolicy`` (megatron-core ``dist_checkpointing``, torch_dist).

On disk, a checkpoint *root* holds one directory per saved step::

    <root>/
      latest                 "step_00000020" (atomic write): the newest complete checkpoint
      best                   JSON {step_dir, metric, mode, value} when a best metric is tracked
      step_00000010/         kept because it is the best by the chosen metric
      step_00000020/         a complete megatron dist checkpoint:
        .metadata, __<rank>_<n>.distcp, metadata.json    megatron/torch DCP files
        meta.json            step, metrics, layout, time, model config, vocab size, extra,
                             whether optimizer state was saved (none before the first step
                             but the DistributedOptimizer's zero state), whether the checkpoint
                             is weights-only (``save_optimizer=False``)
        config.yaml          the resolved run config (when the caller gave it)
      step_00000030.tmp/     a save in progress, or left by a kill: ignored, removed by the next save

What a checkpoint holds: the model (``gpt.sharded_state_dict()``: every tensor by its global name,
so a load at another TP / PP / EP layout reshards), the optimizer's per-parameter state (sharded
the same way, see ``optimizer_leaves``), and a common part (LR scheduler, Adam's step wherever
the optimizer keeps it (``optimizer_step``), ``policy.step_count``, the caller's ``extra`` such
as the loop's data cursor, the config YAML, the model config and vocab size). Each rank's RNG
states (torch, CUDA, megatron's tracker, Python, numpy) are a ``ShardedObject`` keyed by global
rank; they are restored only when the world layout matches the saved one (a resharded load logs
that it skips them). ``load_optimizer=False``
takes only the weights (any layout), e.g. pi_0 for a new RL run or an export.

Weights-only checkpoints: the optimizer's part (Adam's two fp32 moments, 8 bytes per parameter,
plus 4 of fp32 main params for a bf16 model) makes a checkpoint 12 bytes/param with fp32 weights
and 14 with bf16 (SmolLM2-135M: 1.62 GB against 0.54 GB weights-only in fp32, 1.89 GB against
0.27 GB in bf16). It is waste in a checkpoint that is only ever loaded with ``load_optimizer=False`` (the sft stage's
pi_0, the final RL checkpoint with ``algorithm.save_optimizer=false``). ``save_optimizer=False``
writes the model, the LR scheduler, the step count and the RNG states but no optimizer entries,
and records ``"weights_only": true`` in ``meta.json``. ``load_checkpoint(load_optimizer=True)``
refuses such a checkpoint (``CheckpointError``: an exact resume needs the optimizer) unless the
caller passes ``allow_weights_only=True``: then it restores everything that was saved and starts
a fresh optimizer (zero Adam moments, step 0), logging a warning that the continuation is not an
exact resume.

Requirements: every rank must see the same directory (a shared filesystem on several nodes).
Checked on the CPU with megatron's non-distributed optimizer (TP=2+SP and EP=2 -> 1, see
``tests/dist/test_checkpoint_reshard.py``); the DistributedOptimizer's ``fully_reshardable``
format with torch AdamW (as without TE/Apex) on the CPU too (world of one in
``tests/unit/test_checkpoint.py``; DP=2 and EP=2 -> TP=2+SP in the reshard test), not yet on a GPU
with TE's FusedAdam.

Atomicity: every rank writes into ``step_N.tmp``; after megatron's closing barrier rank 0 adds
``meta.json``, renames the directory to ``step_N``, rewrites ``latest`` and only then deletes the
checkpoints retention no longer keeps (``Retention``: the newest ``keep_last`` plus the best by a
metric). A kill at any point leaves the previous checkpoint loadable; loaders never look at
``*.tmp``. A root whose ``latest`` is missing or names a missing directory falls back to the
newest complete ``step_*``.

The sharded write is megatron's synchronous path (one writer thread per rank, no subprocess). It
still asks ``filesystem_async.get_write_results_queue()`` for a queue, which megatron creates as a
``multiprocessing`` *Manager* (a spawned server process: seconds per process, and a crash in
scripts without an ``if __name__ == "__main__"`` guard); ``_use_in_process_write_queue`` hands it
an in-process ``queue.Queue`` instead. That writer also imports ``psutil`` (a dependency of this
package; megatron-core does not declare it).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import queue
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pivotrl_nemo.distributed.cpu_compat import cuda_to_cpu
from pivotrl_nemo.models.megatron.optimizer_checkpoint import (
    optimizer_leaves,
    optimizer_step,
    restore_optimizer,
    sub_optimizers,
)
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_text
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)

FORMAT_VERSION = 1
"""Bumped when the layout of the common state or ``meta.json`` changes incompatibly."""
STEP_PREFIX = "step_"
TMP_SUFFIX = ".tmp"
LATEST_FILE = "latest"
BEST_FILE = "best"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_COMMON_KEY = "pivotrl"
_RNG_KEY = "pivotrl/rng_state"
_SHAPE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_query_groups",
    "head_dim",
    "ffn_hidden_size",
    "num_experts",
    "moe_ffn_hidden_size",
    "qk_layernorm",
    "tie_word_embeddings",
)
"""ModelConfig fields that decide tensor shapes; a checkpoint loads only into a model that agrees."""


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read or does not fit the model (the message names the path)."""


@dataclasses.dataclass(frozen=True)
class Retention:
    """Which complete checkpoints survive a save."""

    keep_last: int = 2
    """The newest this many are kept (>= 1)."""
    best_metric: str = ""
    """Also keep the checkpoint with the best value of this metric (a key of the ``metrics`` given
    to ``save``, e.g. 'train/reward_mean'); '' tracks no best."""
    best_mode: str = "max"
    """'max' or 'min': what best means for ``best_metric``."""

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {self.best_mode!r}")

    @classmethod
    def from_config(cls, algorithm: Any) -> Retention:
        """From an ``AlgorithmConfig`` (``keep_last``, ``best_metric``, ``best_mode``)."""
        return cls(algorithm.keep_last, algorithm.best_metric, algorithm.best_mode)


# ----------------------------------------------------------------------------- directory layout


def step_dir_name(step: int) -> str:
    """``step_00000010`` for step 10."""
    return f"{STEP_PREFIX}{int(step):08d}"


def _is_complete(d: Path) -> bool:
    return _STEP_DIR.match(d.name) is not None and d.is_dir() and (d / META_FILE).is_file()


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, directory), oldest first (``*.tmp`` ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if _is_complete(d) and (m := _STEP_DIR.match(d.name))]
    return sorted(found)


def find_latest(root: str | os.PathLike) -> Path | None:
    """The directory ``root/latest`` names if it is complete, else the newest complete one, else None."""
    root = Path(root)
    latest = root / LATEST_FILE
    if latest.is_file():
        d = root / latest.read_text().strip()
        if _is_complete(d):
            return d
        logger.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", latest, d.name)
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve(path: str | os.PathLike) -> Path:
    """A step directory itself, or the latest checkpoint of a root; FileNotFoundError naming ``path``."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    if (path / "policy.pt").is_file():
        raise CheckpointError(
            f"{path} holds a single-file policy.pt checkpoint of an older version; "
            "re-create it (re-run the stage) to get a dist checkpoint"
        )
    found = find_latest(path)
    if found is None:
        raise FileNotFoundError(
            errno.ENOENT,
            f"no checkpoint at {path}: neither a step directory with {META_FILE} nor a "
            f"root with complete {STEP_PREFIX}* directories",
            str(path),
        )
    return found


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a step directory (or of a root's latest checkpoint), plus ``path``."""
    d = resolve(path)
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {d / META_FILE}: {e}") from e
    meta["path"] = str(d)
    return meta


# ----------------------------------------------------------------------------- state pieces


def _dist() -> tuple[int, int]:
    """(rank, size) of the default process group the checkpoint is written over; (0, 1) without one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def layout_of(policy: Any) -> dict[str, Any]:
    """The world layout a checkpoint is saved at (RNG states are restored only at the same one)."""
    pg = policy.gpt.pg_collection

    def size(name: str) -> int:
        group = getattr(pg, name, None)
        return int(group.size()) if group is not None else 1

    return {
        "world_size": _dist()[1],
        "tp": size("tp"),
        "pp": size("pp"),
        "ep": size("ep"),
        "expert_tp": size("expt_tp"),
        "dp": size("dp"),
        "sequence_parallel": bool(policy.gpt.config.sequence_parallel),
    }


def _rng_state() -> dict[str, Any]:
    from megatron.core import tensor_parallel  # lazy: megatron

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "tracker": {k: v.clone() for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel  # lazy: megatron

    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(dict(state["tracker"]))
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))


def _rng_object(state: Any) -> Any:
    from megatron.core.dist_checkpointing.mapping import ShardedObject  # lazy: megatron

    rank, world = _dist()
    return ShardedObject(_RNG_KEY, state, (world,), (rank,), replica_id=0)


# ----------------------------------------------------------------------------- save


def _use_in_process_write_queue() -> None:
    """Give megatron's synchronous writer an in-process result queue (see the module docstring)."""
    # lazy: megatron
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies import torch as mcore_torch

    if not hasattr(filesystem_async, "_results_queue"):
        raise CheckpointError(
            "megatron-core's filesystem_async has no _results_queue: review "
            "checkpoint._use_in_process_write_queue for this megatron-core version"
        )
    if not filesystem_async.HAVE_PSUTIL:  # the writer would raise on one rank and leave the others waiting
        raise CheckpointError("megatron's checkpoint writer needs psutil: pip install psutil")
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()
    # the synchronous save goes through async_save(..., 'mcore'), which warns that *async* mcore
    # saves are deprecated; nothing here is asynchronous
    mcore_torch._logged_mcore_async_deprecation = True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean_tmp(root: Path) -> None:
    """Remove what interrupted saves left: ``*.tmp`` directories and ``latest.tmp.<pid>``-style files."""
    for p in root.iterdir():
        if p.name.endswith(TMP_SUFFIX) or TMP_SUFFIX + "." in p.name:
            logger.info("removing %s (an incomplete checkpoint or deletion left by an interrupted run)", p)
            _remove(p)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _best(found: list[tuple[int, Path]], retention: Retention) -> tuple[Path, float] | None:
    if not retention.best_metric:
        return None
    scored = []
    for step, d in found:
        try:
            value = json.loads((d / META_FILE).read_text())["metrics"].get(retention.best_metric)
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(value, (int, float)) and value == value:  # not NaN
            scored.append((float(value), step, d))
    if not scored:
        return None
    sign = 1.0 if retention.best_mode == "max" else -1.0
    value, _, d = max(scored, key=lambda t: (sign * t[0], t[1]))  # ties: the newer one
    return d, value


def _apply_retention(root: Path, retention: Retention) -> None:
    """Delete complete checkpoints that are neither among the newest ``keep_last`` nor the best.
    Each is renamed to ``*.tmp`` first, so an interrupted deletion never leaves a half checkpoint
    that looks complete."""
    found = list_checkpoints(root)
    best_note = f" + best {retention.best_metric}" if retention.best_metric else ""
    keep = {d for _, d in found[-retention.keep_last :]}
    best = _best(found, retention)
    if best is not None:
        keep.add(best[0])
        atomic_write_json(
            root / BEST_FILE,
            {"step_dir": best[0].name, "metric": retention.best_metric, "mode": retention.best_mode, "value": best[1]},
        )
    for _, d in found:
        if d not in keep:
            doomed = d.with_name(d.name + ".deleting" + TMP_SUFFIX)
            os.replace(d, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            logger.info("removed checkpoint %s (retention: last %d%s)", d, retention.keep_last, best_note)


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def save_checkpoint(
    policy: Any,
    root: str | os.PathLike,
    step: int,
    extra: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    config_yaml: str | None = None,
    retention: Retention | None = None,
    save_optimizer: bool = True,
) -> Path:
    """Write ``root/step_<step>`` (a collective: every rank of the world calls it); returns it.

    ``extra`` (plain data, e.g. ``{"loop_step": 10}``) comes back from ``load_checkpoint``;
    ``metrics`` go to ``meta.json`` and rank checkpoints for ``retention.best_metric``;
    ``config_yaml`` (the resolved run config) is stored with the checkpoint. Saving a step that
    already has a checkpoint replaces it. ``save_optimizer=False`` leaves the optimizer state out
    (a weights-only checkpoint, see the module docstring): a third of the size with fp32 params,
    a seventh with bf16, but not a point to resume training from exactly.
    """
    from megatron.core import dist_checkpointing  # lazy: megatron
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy  # lazy: megatron

    _use_in_process_write_queue()
    retention = retention or Retention()
    root = Path(root)
    rank, _ = _dist()
    name = step_dir_name(step)
    final, tmp = root / name, root / (name + TMP_SUFFIX)
    t0 = time.perf_counter()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        _clean_tmp(root)
        tmp.mkdir()
    _barrier()

    model_sd = policy.gpt.sharded_state_dict()
    structs: list[Any] = []
    leaves: dict[str, Any] = {}
    if save_optimizer:  # else not even optimizer_leaves: it gives a stateless DistributedOptimizer state
        structs, leaves = optimizer_leaves(policy, model_sd, is_loading=False)
    common = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "step_count": int(policy.step_count),
        "scheduler": policy.scheduler.state_dict(),
        "optimizer_step": optimizer_step(structs),
        "extra": dict(extra or {}),
        "config_yaml": config_yaml,
        "model_cfg": dataclasses.asdict(policy.model_cfg),
        "vocab_size": int(policy.vocab_size),
    }
    state = {"model": model_sd, "optimizer": leaves, "rng": _rng_object(_rng_state()), _COMMON_KEY: common}
    with cuda_to_cpu():
        dist_checkpointing.save(state, str(tmp), sharded_strategy=TorchDistSaveShardedStrategy("torch_dist", 1))
    # dist_checkpointing.save ends with a barrier after megatron's metadata.json: every shard is on disk
    if rank == 0:
        meta = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "step_count": int(policy.step_count),
            "optimizer_state": bool(leaves),
            "weights_only": not save_optimizer,
            "metrics": _json_safe(dict(metrics or {})),
            "layout": layout_of(policy),
            "time": time.time(),
            "model_cfg": _json_safe(common["model_cfg"]),
            "vocab_size": int(policy.vocab_size),
            "extra": _json_safe(common["extra"]),
        }
        if retention.best_metric and retention.best_metric not in meta["metrics"]:
            logger.warning(
                "best_metric %r is not among this step's metrics (%s): step %d cannot be the best",
                retention.best_metric,
                ", ".join(sorted(meta["metrics"])) or "none given",
                step,
            )
        if config_yaml is not None:
            atomic_write_text(tmp / CONFIG_FILE, config_yaml)
        atomic_write_json(tmp / META_FILE, meta)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again: move the old one aside, then swap
            os.replace(final, root / (name + ".replaced" + TMP_SUFFIX))
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_text(root / LATEST_FILE, name + "\n")
        _remove(root / (name + ".replaced" + TMP_SUFFIX))
        _apply_retention(root, retention)
        logger.info(
            "saved checkpoint %s (policy step %d%s) in %.1fs",
            final,
            policy.step_count,
            "" if save_optimizer else ", weights only",
            time.perf_counter() - t0,
        )
    _barrier()
    return final


# ----------------------------------------------------------------------------- load


def check_compatible(meta: dict[str, Any], model_cfg: Any, vocab_size: int) -> None:
    """Raise CheckpointError naming every shape-deciding field where the checkpoint and the model differ."""
    saved = meta["model_cfg"]
    # a dense model has no expert MLPs and an MoE model no dense one: the unused width decides nothing
    unused = "moe_ffn_hidden_size" if model_cfg.num_experts == 0 else "ffn_hidden_size"
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs model {getattr(model_cfg, k)!r}"
        for k in _SHAPE_FIELDS
        if saved.get(k) != getattr(model_cfg, k)
        and not (k == unused and saved.get("num_experts") == model_cfg.num_experts)
    ]
    if meta["vocab_size"] != vocab_size:
        diffs.append(f"vocab_size: checkpoint {meta['vocab_size']} vs model {vocab_size}")
    if diffs:
        raise CheckpointError(f"checkpoint {meta['path']} does not fit this model: " + "; ".join(diffs))


def _load(request: dict, d: Path) -> dict:
    from megatron.core import dist_checkpointing  # lazy: megatron
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException; lazy: ~1 s import

    try:
        with cuda_to_cpu():
            return dist_checkpointing.load(request, str(d))
    except (Exception, CheckpointException) as e:  # megatron / torch DCP raise many types for torn files
        raise CheckpointError(f"cannot load checkpoint {d}: {type(e).__name__}: {_last_line(e)}") from e


def _last_line(e: BaseException) -> str:
    """torch DCP puts whole tracebacks in its messages; the last line says what went wrong."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else repr(e)


def load_model_weights(gpt: Any, path: str | os.PathLike, model_cfg: Any = None, vocab_size: int | None = None) -> dict:
    """Load only the weights of checkpoint ``path`` (a step directory or a root) into a bare
    GPTModel at any layout (a collective); returns the checkpoint's ``meta.json``. With
    ``model_cfg`` and ``vocab_size`` the shapes are checked first, with a readable error."""
    meta = read_meta(path)
    if model_cfg is not None and vocab_size is not None:
        check_compatible(meta, model_cfg, vocab_size)
    loaded = _load({"model": gpt.sharded_state_dict()}, Path(meta["path"]))
    gpt.load_state_dict(loaded["model"], strict=True)
    return meta


def load_checkpoint(
    policy: Any, path: str | os.PathLike, load_optimizer: bool = True, allow_weights_only: bool = False
) -> dict[str, Any]:
    """Restore ``path`` (a step directory, or a root: its latest) into ``policy``; returns ``extra``.

    A collective. The checkpoint may come from another TP / PP / EP layout (megatron reshards the
    model and the per-parameter optimizer state). ``load_optimizer=False`` takes only the weights
    (e.g. pi_0 for a new RL run): optimizer, schedule, step count and RNG stay as they are. RNG
    states are restored only at the layout they were saved at.

    A weights-only checkpoint (saved with ``save_optimizer=False``) loads with
    ``load_optimizer=True`` only with ``allow_weights_only=True``: schedule, step count and RNG
    are restored and the optimizer starts fresh (a warning says the continuation is not exact);
    without it, a ``CheckpointError`` names the checkpoint.
    """
    meta = read_meta(path)
    d = Path(meta["path"])
    check_compatible(meta, policy.model_cfg, policy.vocab_size)
    weights_only = bool(meta.get("weights_only", False))  # absent: written before weights-only saves
    if load_optimizer and weights_only:
        if not allow_weights_only:
            raise CheckpointError(
                f"checkpoint {d} holds weights only (saved with save_optimizer=False, e.g. the final RL "
                "checkpoint under algorithm.save_optimizer=false): it cannot restore an optimizer; "
                "load it with load_optimizer=False"
            )
        logger.warning(
            "checkpoint %s holds weights only: restoring weights, LR schedule, step count and RNG with a "
            "FRESH optimizer (Adam moments and step restart from zero): NOT an exact resume",
            d,
        )
    model_sd = policy.gpt.sharded_state_dict()
    request: dict[str, Any] = {"model": model_sd}
    structs: list[dict] = []
    leaves: dict[str, Any] = {}
    same_layout = meta["layout"] == layout_of(policy)
    if load_optimizer and meta["optimizer_state"]:
        structs, leaves = optimizer_leaves(policy, model_sd, is_loading=True)
        request["optimizer"] = dict(leaves)
    if load_optimizer and same_layout:
        request["rng"] = _rng_object(None)
    loaded = _load(request, d)
    policy.gpt.load_state_dict(loaded["model"], strict=True)
    common = loaded[_COMMON_KEY]
    if not load_optimizer:
        with cuda_to_cpu():
            policy.optimizer.reload_model_params()  # mixed precision: fp32 main params from the new weights
        logger.info("loaded weights of %s (step %d)", d, meta["step"])
        return dict(common["extra"])
    if meta["optimizer_state"]:  # never for a weights-only checkpoint
        restore_optimizer(policy, structs, leaves, loaded["optimizer"], common["optimizer_step"])
    else:  # saved before any optimizer step was taken (e.g. every group had zero reward variance), or weights only
        for sub in sub_optimizers(policy.optimizer):
            if getattr(sub, "optimizer", None) is not None:
                sub.optimizer.state.clear()
        with cuda_to_cpu():
            policy.optimizer.reload_model_params()  # mixed precision: fp32 main params from the loaded weights
    policy.scheduler.num_steps = 0  # load_state_dict *adds* the saved step count
    policy.scheduler.load_state_dict(common["scheduler"])
    policy.step_count = int(common["step_count"])
    if same_layout:
        _set_rng_state(loaded["rng"])
    else:
        logger.info(
            "checkpoint %s was saved at layout %s, this run is %s: RNG states not restored",
            d,
            meta["layout"],
            layout_of(policy),
        )
    logger.info("loaded checkpoint %s (policy step %d)", d, policy.step_count)
    return dict(common["extra"])
