"""How a stage or a command declares itself: once, in its own module.

A **stage** is a step of an experiment that writes outputs under ``run_dir`` and a marker
(``pipeline.runner``). Its module declares, next to the function::

    @stage("filter", upstream=("profile",), sections=lambda c: [c.filter],
           help="keep variance > 0 and mean < lambda_diff: the pivots")
    def filter_stage(ctx: StageContext) -> dict: ...

and that one declaration feeds the CLI (``pivotrl filter``, its ``--help``), ``pivotrl run``
(the default chain is every stage with ``in_run=True``, in registration order), config
validation of ``stages``, the runner (upstream order, fingerprints, state directories, which
stages may run multi-rank) and the report (stage times). An experiment adds a stage by importing
a module that declares one (``plugins=[my.module]``); no list in the package needs editing.

A **command** (``validate``, ``show-config``, ``export``, ``import``, ...) is a CLI verb that is
not a stage: it takes its own arguments and returns an exit code. It declares itself with
``@command(name, help=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pivotrl_nemo.config import ConfigError, PivotRLConfig
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.registry import Registry

__all__ = ["STAGES", "COMMANDS", "Stage", "Command", "StageContext", "StagePartial", "stage", "command", "run_chain"]


class StagePartial(Exception):
    """A stage did its share of the work (e.g. one Slurm array task's profiling shard) but the
    stage as a whole is not finished: no marker is written and the command exits 0."""


@dataclass
class StageContext:
    """What a stage function receives: the config, the run's paths, and the process runtime
    (tokenizer, policies, engines; built lazily and shared by the stages of one process)."""

    cfg: PivotRLConfig
    layout: RunLayout
    runtime: Any  # pipeline.runtime.Runtime (typed Any: the runtime imports heavy modules lazily)


StageFn = Callable[[StageContext], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One stage's declaration (see the module docstring)."""

    name: str
    fn: StageFn
    upstream: tuple[str, ...]
    """Stages whose outputs this one reads; their fingerprints are part of this one's."""
    sections: Callable[[PivotRLConfig], list[Any]]
    """The config values this stage's outputs depend on (its fingerprint covers them)."""
    state_dirs: tuple[str, ...] = ()
    """Directories under run_dir holding resumable partial state: kept across an interruption
    under the same fingerprint, discarded when the stage re-runs under another."""
    multi_rank: bool = False
    """May run over every rank of a torchrun / Slurm launch (others run in one process)."""
    in_run: bool = True
    """Part of the default ``pivotrl run`` chain."""
    help: str = ""


@dataclass(frozen=True)
class Command:
    """A CLI verb that is not a stage: ``main(args) -> exit code``."""

    name: str
    main: Callable[[list[str]], int]
    help: str = ""
    usage: str = ""


STAGES: Registry[Stage] = Registry("stage", "stages")
COMMANDS: Registry[Command] = Registry("command", "command")


def stage(
    name: str,
    *,
    upstream: tuple[str, ...] = (),
    sections: Callable[[PivotRLConfig], list[Any]] = lambda c: [],
    state_dirs: tuple[str, ...] = (),
    multi_rank: bool = False,
    in_run: bool = True,
    help: str = "",
    replace: bool = False,
) -> Callable[[StageFn], StageFn]:
    """Decorator declaring ``fn`` as the stage ``name`` (upstream stages must be registered)."""

    def deco(fn: StageFn) -> StageFn:
        missing = [u for u in upstream if u not in STAGES]
        if missing:
            raise ValueError(f"stage {name!r}: upstream stage(s) {missing} are not registered")
        doc = help or (fn.__doc__ or "").strip().split("\n")[0]
        STAGES.add(
            name,
            Stage(name, fn, tuple(upstream), sections, tuple(state_dirs), multi_rank, in_run, doc),
            replace=replace,
        )
        return fn

    return deco


def command(name: str, *, help: str = "", usage: str = "", replace: bool = False) -> Callable[..., Any]:
    """Decorator declaring ``main(args) -> int`` as the CLI command ``name``."""

    def deco(main: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS.add(
            name, Command(name, main, help or (main.__doc__ or "").strip().split("\n")[0], usage), replace=replace
        )
        return main

    return deco


def run_chain(cfg: PivotRLConfig) -> list[str]:
    """The stages ``pivotrl run`` chains: ``cfg.stages`` when given (validated against the
    registry), else every ``in_run`` stage in registration order."""
    if not cfg.stages:
        return [n for n in STAGES.names() if STAGES.get(n).in_run]
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"config key 'stages': {STAGES.unknown_message(unknown[0])}")
    return list(cfg.stages)
