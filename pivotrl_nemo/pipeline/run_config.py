"""A run's saved configuration is the source of truth for every later command on it.

``load_run_config(overrides)``: when the run directory (``run_dir=`` on the command line, or the
one the overrides resolve to) holds a ``config.yaml`` (the runner writes it at every stage), that
configuration is the base and ``overrides`` go on top of it; so ``pivotrl export run_dir=R ...``,
``pivotrl eval run_dir=R`` or a resumed ``pivotrl train run_dir=R algorithm.steps=200`` need no
other argument. An override that would change the run's model or tokenizer (``IDENTITY_KEYS``)
is refused naming the key: that needs a new run directory. ``experiment=`` may repeat the run's
own experiment (dropped: the saved config already holds it) but not name another.
"""

from __future__ import annotations

from pivotrl_nemo.config import ConfigError, PivotRLConfig, load_config
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)

IDENTITY_KEYS = (
    "tokenizer",
    "tokenizer_vocab_size",
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_query_groups",
    "head_dim",
    "qk_layernorm",
    "ffn_hidden_size",
    "num_experts",
    "moe_ffn_hidden_size",
    "moe_router_topk",
    "rotary_base",
    "norm_epsilon",
    "tie_word_embeddings",
    "init_checkpoint",
)
"""``model.*`` keys that make a run's checkpoints what they are: fixed once the run has a config."""


def _value(overrides: list[str], key: str) -> str | None:
    """The value of the last plain ``key=value`` override, if any."""
    found = None
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k == key:
            found = v.strip().strip("'\"")
    return found


def run_dir_of(overrides: list[str]) -> str:
    """The run directory ``overrides`` name or resolve to."""
    given = _value(overrides, "run_dir")
    return given if given is not None else load_config(overrides).run_dir


def load_run_config(overrides: list[str]) -> PivotRLConfig:
    """The configuration of the run ``overrides`` point at: its saved one with ``overrides`` on top,
    or (a new run directory) the one ``overrides`` compose; see the module docstring."""
    saved = RunLayout.of(run_dir_of(overrides)).config_yaml
    if not saved.is_file():
        return load_config(overrides)
    stored = load_config([], base=saved)
    experiment = _value(overrides, "experiment")
    if experiment is not None and experiment != stored.experiment:
        raise ConfigError(
            f"config key 'experiment': {saved.parent} holds a run of experiment {stored.experiment!r} "
            f"({saved}); experiment={experiment} would mix the two: choose another run_dir=, or drop "
            "experiment= to continue that run"
        )
    rest = [o for o in overrides if o.partition("=")[0] != "experiment"]
    cfg = load_config(rest, base=saved)
    for key in IDENTITY_KEYS:
        was, now = getattr(stored.model, key), getattr(cfg.model, key)
        if was != now:
            raise ConfigError(
                f"config key 'model.{key}': {now!r} differs from {was!r} in {saved}, the run this run_dir "
                "holds: a run's model and tokenizer are fixed once it has run; use a new run_dir= (or "
                f"remove {saved.parent} to start it over)"
            )
    log.debug("configuration: %s with %s on top", saved, rest)
    return cfg
