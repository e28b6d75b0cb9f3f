"""Hugging Face checkpoints out of and into runs: the ``pivotrl export`` and ``pivotrl import`` commands.

``pivotrl export run_dir=R export.checkpoint=train|sft export.out=DIR [export.overwrite=true]``
writes a run's megatron checkpoint (the latest step of ``<run_dir>/<checkpoint>/checkpoint``; pi_0
for 'sft') as a Hugging Face folder (``models.megatron.hf.exporter.export_hf``): safetensors,
config.json, generation_config.json and the run's tokenizer. ``export.*`` keys are this command's
own; the run's saved configuration (``pipeline.run_config``) gives the model and tokenizer, and
other overrides go on top of it (a layout, ``parallel.*``, under torchrun).

``pivotrl import hf_dir=HF_FOLDER out=CHECKPOINT_DIR [overwrite=true] [overrides]`` reads the HF
config (``hf.importer.model_config_from_hf``), builds the megatron policy at the requested layout
(``parallel.*`` overrides, under torchrun), loads the safetensors into it (each rank reads only
its shards) and writes ``MegatronPolicy.save(out)`` (weights only) and ``out/model.yaml``: the
``model.*`` keys that describe the checkpoint, which ``model_from=out`` sets in a run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.config.model_from import MODEL_FILE
from pivotrl_nemo.config.model_schema import ARCH_KEYS, HYBRID_KEYS, MOE_KEYS, RUN_CHOICES
from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.distributed import env
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.pipeline.run_config import load_run_config
from pivotrl_nemo.pipeline.runner import check_finished_state
from pivotrl_nemo.pipeline.runtime import Runtime, VocabularyError, vocabulary_rows
from pivotrl_nemo.pipeline.stage import command
from pivotrl_nemo.utils.io import atomic_write_text
from pivotrl_nemo.utils.logging import configure_logging, get_logger

logger = get_logger(__name__)

CHECKPOINTS = ("train", "sft")


def export_stage(cfg: Any, run_dir: str | Path, which: str, out: str | Path, overwrite: bool = False) -> Path:
    """Export ``<run_dir>/<which>/checkpoint`` (which: 'train' or 'sft'; its latest step) of the run
    configured by ``cfg`` (a ``PivotRLConfig``) to the HF folder ``out``; returns ``out``.

    The model shape comes from the checkpoint's own ``model_cfg``; the tokenizer from the run.
    Runs at the layout this process runs (``Runtime.parallel``: ``cfg.parallel`` among several
    ranks; every rank calls it, rank 0 writes); the dist checkpoint reshards on load.
    """
    # lazy: megatron and torch.distributed
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.build import build_model
    from pivotrl_nemo.models.megatron.checkpoint import load_model_weights, read_meta
    from pivotrl_nemo.models.megatron.hf.exporter import export_hf

    if which not in CHECKPOINTS:
        raise ValueError(f"export.checkpoint={which!r}; use one of {', '.join(CHECKPOINTS)}")
    layout = RunLayout.of(run_dir)
    check_finished_state(layout, which)  # not a checkpoint left by an interrupted run of another config
    rt = Runtime(cfg, layout)
    root = rt.pi0_checkpoint if which == "sft" else layout.checkpoint(which)
    try:
        meta = read_meta(root)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {which} checkpoint at {root}: run `pivotrl {which}` first") from None
    model_cfg = ModelConfig(**meta["model_cfg"])
    vocab = int(meta["vocab_size"])
    if rt.vocab_size != vocab:
        raise ValueError(f"checkpoint vocab_size {vocab} != the run tokenizer's padded {rt.vocab_size}")
    init_distributed(rt.parallel, seed=model_cfg.seed)
    gpt = build_model(model_cfg, vocab, rt.parallel)
    load_model_weights(gpt, meta["path"], model_cfg, vocab)
    out = export_hf(gpt, model_cfg, rt.tokenizer, out, overwrite=overwrite)
    logger.info("exported %s checkpoint (step %s) of %s to %s", which, meta.get("step"), run_dir, out)
    return out


def _config_or_none(overrides: list[str], of_run: bool = False) -> Any:
    """The config with logging set up (``of_run``: the run's saved one with ``overrides`` on top,
    ``load_run_config``), or None after printing the config error."""
    try:
        cfg = load_run_config(overrides) if of_run else load_config(overrides)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return None
    configure_logging(cfg.log_level)
    return cfg


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def _split_args(args: list[str], own_key) -> tuple[dict[str, str], list[str]]:
    """``KEY=VALUE`` arguments whose ``own_key(KEY)`` is not None (as a dict under that name) and
    the remaining Hydra overrides."""
    own: dict[str, str] = {}
    rest: list[str] = []
    for a in args:
        key, sep, value = a.partition("=")
        name = own_key(key) if sep else None
        if name is not None:
            own[name] = value
        else:
            rest.append(a)
    return own, rest


def split_export_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``export.KEY=VALUE`` arguments (as a dict) and the remaining Hydra overrides."""
    return _split_args(args, lambda k: k[len("export.") :] if k.startswith("export.") else None)


@command(
    "export",
    usage="pivotrl export run_dir=R export.checkpoint=train|sft export.out=DIR [export.overwrite=true] [overrides]",
    help="write a run's sft or train checkpoint as a Hugging Face folder (safetensors, config, tokenizer)",
)
def export_main(args: list[str]) -> int:
    """The ``pivotrl export`` command: returns the exit code."""
    own, rest = split_export_args(args)
    unknown = sorted(set(own) - {"checkpoint", "out", "overwrite"})
    if unknown or "out" not in own:
        sys.stderr.write(
            "usage: pivotrl export run_dir=R export.checkpoint=train|sft export.out=DIR "
            f"[export.overwrite=true] [overrides]{'; unknown: ' + ', '.join(unknown) if unknown else ''}\n"
        )
        return 2
    cfg = _config_or_none(rest, of_run=True)
    if cfg is None:
        return 2
    overwrite = _truthy(own.get("overwrite", "false"))
    from pivotrl_nemo.models.megatron.checkpoint import CheckpointError  # lazy: megatron

    try:
        export_stage(cfg, cfg.run_dir, own.get("checkpoint", "train"), own["out"], overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, NotImplementedError, CheckpointError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0


# --------------------------------------------------------------------------- pivotrl import

IMPORT_USAGE = (
    "usage: pivotrl import hf_dir=HF_FOLDER out=CHECKPOINT_DIR [overwrite=true] "
    "[overrides: parallel.*, model.params_dtype=..., ...]\n"
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _hydra_value(v: Any) -> str:
    """A value as a Hydra command-line override writes it (quoted when it needs to be)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    s = repr(v) if isinstance(v, float) else str(v)
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_overrides(model_cfg: Any, tokenizer_dir: str | Path | None = None) -> list[str]:
    """``model.KEY=VALUE`` overrides that make ``load_config`` build ``model_cfg``'s architecture
    (``ARCH_KEYS``), plus ``model.tokenizer=DIR`` when given."""
    out = [f"model.{k}={_hydra_value(getattr(model_cfg, k))}" for k in ARCH_KEYS]
    if tokenizer_dir is not None:
        out.append(f"model.tokenizer={_hydra_value(str(tokenizer_dir))}")
    return out


def model_file_keys(model_cfg: Any, vocab: int, out: str | Path, tokenizer_dir: str | Path | None) -> dict[str, Any]:
    """What ``model.yaml`` (``config.model_from.MODEL_FILE``) next to an imported checkpoint says:
    the architecture keys that apply to it, its tokenizer and vocabulary, and the checkpoint."""
    skip = set(RUN_CHOICES) | set(MOE_KEYS if model_cfg.num_experts == 0 else ())
    skip |= set(HYBRID_KEYS if model_cfg.arch != "hybrid" else ())
    keys: dict[str, Any] = {k: getattr(model_cfg, k) for k in ARCH_KEYS if k not in skip}
    if tokenizer_dir is not None:
        keys["tokenizer"] = str(Path(tokenizer_dir).resolve())
    keys.update(tokenizer_vocab_size=0, vocab_size=vocab, init_checkpoint=str(Path(out).resolve()))
    return keys


def split_import_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The import command's own ``hf_dir=`` / ``out=`` / ``overwrite=`` arguments and the rest."""
    return _split_args(args, lambda k: k if k in ("hf_dir", "out", "overwrite") else None)


def import_stage(cfg: Any, hf_dir: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the HF checkpoint ``hf_dir`` as a megatron policy checkpoint (``MegatronPolicy.save``)
    in ``out``, built from ``cfg.model`` at the layout this process runs (``Runtime.parallel``:
    ``cfg.parallel`` among several ranks). Every rank calls it. Returns a summary (vocab size,
    layout, tensors loaded on this rank)."""
    # lazy: transformers, megatron and torch.distributed
    from transformers import AutoConfig

    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.hf.importer import HFImportError, load_hf_checkpoint_into
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace its checkpoint")
    hf_config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    vocab = int(hf_config.vocab_size)
    parallel = Runtime(cfg).parallel
    if vocab % parallel.tensor_model_parallel_size:
        raise HFImportError(
            f"vocab_size {vocab} is not divisible by "
            f"parallel.tensor_model_parallel_size={parallel.tensor_model_parallel_size}"
        )
    init_distributed(parallel, seed=cfg.model.seed)
    policy = MegatronPolicy(cfg.model, vocab, cfg.algorithm.optim, parallel=parallel)
    n = load_hf_checkpoint_into(policy.gpt, hf_dir, cfg.model)
    policy.save(out, extra={"imported_from": str(Path(hf_dir).resolve())}, save_optimizer=False)
    logger.info("imported %s into %s: %d local tensors, layout %s", hf_dir, out, n, parallel)
    return {"vocab_size": vocab, "parallel": parallel, "tensors": n}


@command(
    "import",
    usage=IMPORT_USAGE.strip(),
    help="convert a Hugging Face checkpoint (Llama, Qwen3, Qwen3-MoE) into a megatron checkpoint",
)
def import_main(args: list[str]) -> int:
    """The ``pivotrl import`` command: returns the exit code. Prints the model config it derived
    from the HF config and the Hydra overrides that train on the imported checkpoint."""
    from transformers import AutoConfig  # lazy: transformers

    from pivotrl_nemo.models.megatron.hf.importer import HFImportError, model_config_from_hf

    own, rest = split_import_args(args)
    if "hf_dir" not in own or "out" not in own:
        sys.stderr.write(IMPORT_USAGE)
        return 2
    hf_dir = Path(own["hf_dir"]).expanduser().resolve()
    try:
        hf_config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
        derived = model_config_from_hf(hf_config)
    except (OSError, ValueError) as e:  # no/invalid config.json, or HFImportError
        sys.stderr.write(f"error: {hf_dir}: {e}\n")
        return 1
    tokenizer_dir = hf_dir if any((hf_dir / f).is_file() for f in _TOKENIZER_FILES) else None
    given = {a.partition("=")[0].lstrip("+~") for a in rest}
    overrides = [o for o in model_overrides(derived, tokenizer_dir) if o.partition("=")[0] not in given]
    cfg = _config_or_none(overrides + rest)
    if cfg is None:
        return 2
    overwrite = _truthy(own.get("overwrite", "false"))
    try:
        summary = import_stage(cfg, hf_dir, own["out"], overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, HFImportError, ValueError, NotImplementedError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    p = summary["parallel"]
    keys = model_file_keys(cfg.model, summary["vocab_size"], own["out"], tokenizer_dir)
    model_file = Path(own["out"]) / MODEL_FILE
    logger.info("derived model config: %s", {k: getattr(cfg.model, k) for k in ARCH_KEYS})
    if env.rank() == 0:
        atomic_write_text(
            model_file,
            f"# model.* keys of the checkpoint in this directory, written by `pivotrl import` from {hf_dir}.\n"
            f"# Train on it with model_from={own['out']} (explicit model.* overrides of these are refused).\n"
            + OmegaConf.to_yaml(OmegaConf.create(keys)),
        )
        sys.stdout.write(
            f"imported {hf_dir} ({hf_config.model_type}, vocab {summary['vocab_size']}) -> {own['out']} "
            f"[TP={p.tensor_model_parallel_size} PP={p.pipeline_model_parallel_size} "
            f"EP={p.expert_model_parallel_size}]\nmodel config ({model_file}):\n"
            + "".join(f"  {ln}\n" for ln in OmegaConf.to_yaml(OmegaConf.create(keys)).splitlines())
            + "train on it (sft first, or sft.steps=0 to take it as pi_0 as it is) with:\n"
            + f"  pivotrl run experiment=... model_from={own['out']}\n"
        )
        _warn_vocab(cfg.model.tokenizer if tokenizer_dir is not None else None, summary["vocab_size"], own["out"])
    return 0


def _warn_vocab(tokenizer_dir: str | None, vocab: int, out: str) -> None:
    """Run the start-up vocabulary check now (``runtime.vocabulary_rows``), so a tokenizer that
    does not fit the checkpoint is named at import, not at the first stage."""
    if tokenizer_dir is None:
        sys.stdout.write(
            "note: no tokenizer files in the HF folder; add model.tokenizer=<the tokenizer it was trained "
            f"with> to the model.yaml (it must have at most {vocab} tokens)\n"
        )
        return
    from pivotrl_nemo.data.tokenizer import load_tokenizer  # lazy: transformers

    try:
        model = ModelConfig(tokenizer=tokenizer_dir, vocab_size=vocab, init_checkpoint=str(out))
        vocabulary_rows(len(load_tokenizer(tokenizer_dir)), model, vocab)
    except VocabularyError as e:
        sys.stdout.write(f"warning: {e}\n")
