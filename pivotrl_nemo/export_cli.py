"""``pivotrl export [hydra overrides] export.checkpoint=train|sft export.out=DIR [export.overwrite=true]``

Writes a run's megatron checkpoint (``<run_dir>/<checkpoint>/checkpoint/policy.pt``) as a Hugging
Face folder (``models.megatron.hf_export.export_hf``): safetensors, config.json,
generation_config.json and the run's tokenizer. ``export.*`` keys are this command's own; the
rest are the usual overrides that resolve ``run_dir`` and the tokenizer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)

CHECKPOINTS = ("train", "sft")


def export_stage(cfg: Any, run_dir: str | Path, which: str, out: str | Path, overwrite: bool = False) -> Path:
    """Export ``<run_dir>/<which>/checkpoint`` (which: 'train' or 'sft') of the run configured by
    ``cfg`` (a ``PivotRLConfig``) to the HF folder ``out``; returns ``out``.

    The model shape comes from the checkpoint's own ``model_cfg``; the tokenizer from the run.
    """
    import torch

    from pivotrl_nemo.config.schema import ModelConfig
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.build import build_gpt_model
    from pivotrl_nemo.models.megatron.hf_export import export_hf
    from pivotrl_nemo.models.megatron.policy import CHECKPOINT_FILE
    from pivotrl_nemo.runtime import Runtime

    if which not in CHECKPOINTS:
        raise ValueError(f"export.checkpoint={which!r}; use one of {', '.join(CHECKPOINTS)}")
    path = Path(run_dir) / which / "checkpoint" / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {which} checkpoint at {path}: run `pivotrl {which}` first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model_cfg = ModelConfig(**state["model_cfg"])
    rt = Runtime(cfg)
    if rt.vocab_size != state["vocab_size"]:
        raise ValueError(f"checkpoint vocab_size {state['vocab_size']} != the run tokenizer's padded {rt.vocab_size}")
    init_distributed(cfg.parallel, seed=model_cfg.seed)
    gpt = build_gpt_model(model_cfg, state["vocab_size"], cfg.parallel)
    gpt.load_state_dict(state["model"], strict=True)
    out = export_hf(gpt, model_cfg, rt.tokenizer, out, overwrite=overwrite)
    logger.info("exported %s checkpoint (step %s) of %s to %s", which, state.get("step"), run_dir, out)
    return out


def split_export_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``export.KEY=VALUE`` arguments (as a dict) and the remaining Hydra overrides."""
    own: dict[str, str] = {}
    rest: list[str] = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key.startswith("export."):
            own[key[len("export."):]] = value
        else:
            rest.append(a)
    return own, rest


def export_main(args: list[str]) -> int:
    """The ``pivotrl export`` command: returns the exit code."""
    from pivotrl_nemo.config import ConfigError, load_config
    from pivotrl_nemo.utils.logging import configure_logging

    own, rest = split_export_args(args)
    unknown = sorted(set(own) - {"checkpoint", "out", "overwrite"})
    if unknown or "out" not in own:
        sys.stderr.write("usage: pivotrl export [overrides] export.checkpoint=train|sft export.out=DIR "
                         f"[export.overwrite=true]{'; unknown: ' + ', '.join(unknown) if unknown else ''}\n")
        return 2
    try:
        cfg = load_config(rest)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    configure_logging(cfg.log_level)
    overwrite = own.get("overwrite", "false").lower() in ("1", "true", "yes")
    try:
        export_stage(cfg, cfg.run_dir, own.get("checkpoint", "train"), own["out"], overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, NotImplementedError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0
