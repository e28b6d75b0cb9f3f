"""A run's saved configuration is the source of truth for every later command on it.

``load_run_config(overrides)``: when the run directory (``run_dir=`` on the command line, or the
one the overrides resolve to) holds a ``config.yaml`` (the runner writes it at every stage):

* without ``experiment=`` on the command line, that configuration is the base and ``overrides``
  go on top of it, so ``pivotrl export run_dir=R ...`` or ``pivotrl eval run_dir=R`` need no other
  argument; ``PER_COMMAND`` keys (``stages``, ``log_level``) are not carried over;
* with ``experiment=``, the configuration is composed as always (the experiment's file, edits
  included, plus ``overrides``).

Either way an override that would change the run's model or tokenizer (``IDENTITY_KEYS``) is
refused naming the key: that needs a new run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pivotrl_nemo.config import ConfigError, PivotRLConfig, load_config
from pivotrl_nemo.config.model_schema import IDENTITY_KEYS
from pivotrl_nemo.pipeline.layout import RunLayout

PER_COMMAND = ("stages", "log_level")
"""Top-level keys that belong to one command, not to the run: never taken from the saved config."""


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _value(overrides: list[str], key: str) -> str | None:
    """The value of the last ``key=value`` override (``+`` / ``++`` forms included), if any."""
    found = None
    for o in overrides:
        k, sep, v = o.lstrip("+").partition("=")
        if sep and k == key:
            found = v.strip().strip("'\"")
    return found


def run_dir_of(overrides: list[str]) -> str:
    """The run directory ``overrides`` name or resolve to."""
    given = _value(overrides, "run_dir")
    return given if given is not None else load_config(overrides).run_dir


def _saved_model(saved: Path) -> dict[str, Any]:
    """The ``model`` section of a saved configuration, read as it is (not validated: a GPU run's
    config must still load on a laptop with the overrides that make it fit)."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(str(saved)))
    except (OSError, OmegaConfBaseException) as e:
        raise ConfigError(f"cannot read the run's saved configuration {saved}: {e}") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    return model if isinstance(model, dict) else {}


def load_run_config(overrides: list[str]) -> PivotRLConfig:
    """The configuration of the run ``overrides`` point at (see the module docstring)."""
    saved = RunLayout.of(run_dir_of(overrides)).config_yaml
    if not saved.is_file():
        return load_config(overrides)
    if _value(overrides, "experiment") is not None:
        cfg = load_config(overrides)
    else:
        given = {_key(o) for o in overrides}
        per_command = [f"{k}={'[]' if k == 'stages' else 'INFO'}" for k in PER_COMMAND if k not in given]
        try:
            cfg = load_config(per_command + overrides, base=saved)
        except ConfigError as e:
            raise ConfigError(
                f"{e} (continuing the run saved in {saved}: fix the key there, pass experiment=... to "
                "compose the configuration afresh, or use a new run_dir=)"
            ) from None
    stored = _saved_model(saved)
    for key in IDENTITY_KEYS:
        if key in stored and stored[key] != getattr(cfg.model, key):
            raise ConfigError(
                f"config key 'model.{key}': {getattr(cfg.model, key)!r} differs from {stored[key]!r} in "
                f"{saved}, the run this run_dir holds: a run's model and tokenizer are fixed once it has "
                f"run; use a new run_dir= (or remove {saved.parent} to start it over)"
            )
    return cfg
