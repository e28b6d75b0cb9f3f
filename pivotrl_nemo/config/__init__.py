"""Config loading: Hydra composes ``conf/`` (installed as ``pivotrl_nemo.conf``), the result is
merged into the typed ``PivotRLConfig`` schema, then validated.

``load_config(overrides)`` is the one way to get a config; it fails at start-up on an unknown,
mistyped, out-of-range or incompatible key with a message naming the key. An unknown key, whether
it is a typo of an existing one (``algorithm.stpes=5``) or added with ``+`` / ``++`` (which Hydra
would otherwise keep and the schema silently drop), is refused naming the closest known key.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import asdict, fields, is_dataclass
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pivotrl_nemo.registry import DOMAINS, closest

from .errors import ConfigError
from .model_from import apply_model_from
from .schema import PivotRLConfig
from .validate import validate

__all__ = ["PivotRLConfig", "ConfigError", "load_config", "to_yaml", "fingerprint"]


BASE_CONFIG = "pivotrl_run_base"
"""The name ``load_config(base=...)`` stores a run's saved configuration under."""
BASE_GROUPS = ("model", "domain", "rollout", "parallel", "judge")
"""Config groups an override may still select on top of a saved configuration (``base``)."""


def load_config(
    overrides: list[str] | None = None, config_name: str = "pivot_rl", base: str | os.PathLike | None = None
) -> PivotRLConfig:
    """The validated configuration: ``conf/<config_name>`` composed with ``overrides``; or, with
    ``base`` (a resolved configuration saved as YAML, e.g. a run's ``config.yaml``), that
    configuration with ``overrides`` on top (group selections such as ``parallel=tp2`` merge
    over it; ``experiment=`` is the caller's to handle)."""
    overrides = list(overrides or [])
    # The typed schema is the first entry of conf/pivot_rl.yaml's defaults list, so Hydra itself
    # type-checks every override against it and rejects unknown keys.
    ConfigStore.instance().store(name="pivotrl_schema", node=PivotRLConfig)
    if base is not None:
        config_name = BASE_CONFIG
        ConfigStore.instance().store(name=BASE_CONFIG, node=_base_node(base))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="pivotrl_nemo.conf", version_base="1.3"):
            composed = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        key = _error_key(e)
        if key and key not in schema_keys():
            raise ConfigError(_unknown_key_message(key, overrides)) from None
        raise ConfigError(_describe(e)) from None
    unknown = _unknown_key(composed, PivotRLConfig(), "")
    if unknown:
        raise ConfigError(_unknown_key_message(unknown, overrides)) from None
    schema = OmegaConf.structured(PivotRLConfig)
    try:
        merged = OmegaConf.merge(schema, composed)
        cfg: PivotRLConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg}") from None
    _import_plugins(cfg.plugins)
    if base is None or any(o.lstrip("+~").partition("=")[0] == "model_from" for o in overrides):
        apply_model_from(cfg, overrides)  # a saved run's model.* values already are its source's
    _resolve_defaults(cfg)
    validate(cfg)
    return cfg


def _base_node(path: str | os.PathLike) -> DictConfig:
    """A saved configuration as a primary config: its values first, then any group an override
    selects (``BASE_GROUPS``) over them."""
    try:
        saved = OmegaConf.load(str(path))
    except (OSError, OmegaConfBaseException) as e:
        raise ConfigError(f"cannot read the saved configuration {path}: {e}") from None
    if not isinstance(saved, DictConfig):
        raise ConfigError(f"{path}: not a configuration mapping")
    saved.pop("defaults", None)
    defaults: list[Any] = ["pivotrl_schema", "_self_", *({g: None} for g in BASE_GROUPS)]
    return OmegaConf.create({"defaults": defaults, **OmegaConf.to_container(saved)})  # type: ignore[dict-item]


def _resolve_defaults(cfg: PivotRLConfig) -> None:
    """Fill choices left to other components: an empty ``verifier.name`` becomes the domain's
    default verifier, so the resolved config (and every fingerprint) names it."""
    if not cfg.verifier.name and cfg.data.source in DOMAINS:
        cfg.verifier.name = DOMAINS.get(cfg.data.source).default_verifier


def _import_plugins(modules: list[str]) -> None:
    """Import ``plugins`` modules (they register verifiers, domains, engines, stages)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"config key 'plugins': cannot import {name!r}: {e}") from None


def schema_keys() -> list[str]:
    """Every dotted key of the schema (sections and leaves), in declaration order."""
    out: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            out.append(prefix + f.name)
            value = getattr(obj, f.name)
            if is_dataclass(value) and not isinstance(value, type):
                walk(value, prefix + f.name + ".")

    walk(PivotRLConfig(), "")
    return out


def _unknown_key(node: DictConfig, schema: Any, prefix: str) -> str | None:
    """The first key of the composed ``node`` that the schema section ``schema`` lacks."""
    names = {f.name for f in fields(schema)}
    for key in node.keys():
        name = str(key)
        if name not in names:
            return prefix + name
        sub = getattr(schema, name)
        child = node._get_node(name)
        if is_dataclass(sub) and isinstance(child, DictConfig):
            found = _unknown_key(child, sub, prefix + name + ".")
            if found:
                return found
    return None


def _unknown_key_message(key: str, overrides: list[str]) -> str:
    added = any(o.lstrip("+").split("=", 1)[0] == key for o in overrides if o.startswith("+"))
    return (
        f"config key '{key}': no such key{closest(key, schema_keys())}; "
        + ("'+' adds a key only where the schema has one; " if added else "")
        + "`pivotrl show-config` prints every key"
    )


def _error_key(e: BaseException) -> str | None:
    key = getattr(e, "full_key", None)
    cause = e.__cause__
    while not key and cause is not None:
        key = getattr(cause, "full_key", None)
        cause = cause.__cause__
    return str(key) if key else None


def _describe(e: Exception) -> str:
    text = " ".join(str(e).split())
    key = getattr(e, "full_key", None)
    cause = e.__cause__
    while cause is not None:
        key = key or getattr(cause, "full_key", None)
        text += ": " + " ".join(str(cause).split("full_key")[0].split())
        cause = cause.__cause__
    return f"config key '{key}': {text}" if key else f"config error: {text}"


def to_yaml(cfg: PivotRLConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def fingerprint(*sections: object) -> str:
    """Stable hash of config sections (dataclasses or plain values): decides stage re-runs."""
    payload = json.dumps(
        [asdict(s) if is_dataclass(s) and not isinstance(s, type) else s for s in sections], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
