"""``model_from``: the ``model.*`` keys of a model that already exists, in one argument.

A source is either the directory ``pivotrl import ... out=DIR`` wrote (its ``model.yaml``), that
file itself, or the name of a registered model source (``registry.MODEL_SOURCES``, e.g.
'smollm2'). Its keys replace the experiment's; an explicit ``model.<key>=`` override that
disagrees with one of them is refused: a checkpoint's architecture, tokenizer and vocabulary are
what they are.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pivotrl_nemo.registry import MODEL_SOURCES

from .errors import ConfigError
from .schema import ModelConfig, PivotRLConfig

MODEL_FILE = "model.yaml"
"""The file ``pivotrl import`` writes next to the checkpoint it makes."""
RELABEL_KEYS = frozenset({"name"})
"""Keys of a model source an override may still change (labels, not the model)."""


def model_source_keys(spec: str) -> tuple[dict[str, Any], str]:
    """(the ``model.*`` keys ``spec`` names, where they came from)."""
    if spec in MODEL_SOURCES:
        try:
            return dict(MODEL_SOURCES.get(spec).model_keys()), f"model source {spec!r}"
        except (FileNotFoundError, ImportError) as e:
            raise ConfigError(f"config key 'model_from': model source {spec!r} is not available: {e}") from None
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ConfigError(
            f"config key 'model_from': {spec!r} is neither a registered model source "
            f"({', '.join(MODEL_SOURCES.names())}) nor a directory with the {MODEL_FILE} that "
            "`pivotrl import hf_dir=... out=DIR` writes (pass model_from=DIR)"
        )
    try:
        keys = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, OmegaConfBaseException) as e:
        raise ConfigError(f"config key 'model_from': cannot read {path}: {e}") from None
    if not isinstance(keys, dict):
        raise ConfigError(f"config key 'model_from': {path} is not a mapping of model.* keys")
    return {str(k): v for k, v in keys.items()}, str(path)


def _explicit_model_keys(overrides: list[str]) -> set[str]:
    out = set()
    for o in overrides:
        key = o.lstrip("+~").partition("=")[0]
        if key.startswith("model."):
            out.add(key[len("model.") :])
    return out


def apply_model_from(cfg: PivotRLConfig, overrides: list[str]) -> None:
    """Set ``cfg.model`` from ``cfg.model_from`` (in place; nothing when it is '')."""
    if not cfg.model_from:
        return
    keys, origin = model_source_keys(cfg.model_from)
    if cfg.model_from not in MODEL_SOURCES:  # saved absolute: later commands may run elsewhere
        cfg.model_from = str(Path(cfg.model_from).expanduser().resolve())
    names = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(keys) - names)
    if unknown:
        raise ConfigError(f"{origin}: model.{unknown[0]} is not a model key (`pivotrl show-config` lists them)")
    for key in sorted(_explicit_model_keys(overrides) & set(keys) - RELABEL_KEYS):
        given = getattr(cfg.model, key)
        if given != keys[key]:
            raise ConfigError(
                f"config key 'model.{key}': {given!r} conflicts with {keys[key]!r} from model_from="
                f"{cfg.model_from} ({origin}): that model's architecture, tokenizer and vocabulary are "
                "fixed; drop the override"
            )
    explicit_labels = _explicit_model_keys(overrides) & RELABEL_KEYS
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(cfg.model), {k: v for k, v in keys.items() if k not in explicit_labels}
        )
        cfg.model = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{origin}: model.{getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
