"""Registries: the one place each extension point's names live.

Every pluggable kind (verifier, domain, rollout engine, stage) has a ``Registry``. Built-in entries
are listed once, in the table below, as ``"module:attribute"`` strings, so that naming them (config
validation, ``--help``) imports nothing heavy; the object is imported on first ``get``. Code outside
the package (an experiment, a test) adds entries with the decorator::

    from pivotrl_nemo.registry import VERIFIERS

    @VERIFIERS.register("my_verifier")
    class MyVerifier(VerifierBase): ...

and selects them by name in the config (``verifier.name=my_verifier``). This module imports only
the standard library, so every layer may use it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate registry name; the message lists the choices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def closest(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or '' when none is close."""
    near = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


class Registry(Generic[T]):
    """Names -> objects of one kind, in registration order.

    ``config_key`` is the configuration field that selects an entry (for error messages).
    """

    def __init__(self, kind: str, config_key: str, builtins: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.config_key = config_key
        self._lazy: dict[str, str] = dict(builtins or {})
        self._loaded: dict[str, T] = {}
        self._order: list[str] = list(self._lazy)

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (a duplicate name is an error unless ``replace``)."""

        def deco(obj: T) -> T:
            self.add(name, obj, replace=replace)
            return obj

        return deco

    def add(self, name: str, obj: T, *, replace: bool = False) -> None:
        """Register ``obj`` under ``name``."""
        if name in self and not replace:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        if name not in self._order:
            self._order.append(name)
        self._lazy.pop(name, None)
        self._loaded[name] = obj

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests that register toys clean up with this)."""
        self._lazy.pop(name, None)
        self._loaded.pop(name, None)
        if name in self._order:
            self._order.remove(name)

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or name in self._loaded

    def names(self) -> list[str]:
        """Every registered name, built-ins first, in registration order."""
        return list(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unknown_message(self, name: str) -> str:
        """Why ``name`` is not a choice, with the choices and the closest one."""
        return f"unknown {self.kind} {name!r}{closest(name, self.names())}; choose one of {self.names()}"

    def get(self, name: str) -> T:
        """The object registered as ``name`` (importing a built-in on first use)."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._lazy:
            raise RegistryError(f"{self.config_key}: {self.unknown_message(name)}")
        module, _, attr = self._lazy[name].partition(":")
        obj: T = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        del self._lazy[name]
        return obj

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` for every entry (imports every built-in)."""
        return [(n, self.get(n)) for n in self.names()]


def _builtins(package: str, table: dict[str, str]) -> dict[str, str]:
    return {name: f"{package}.{target}" for name, target in table.items()}


VERIFIERS: Registry[Any] = Registry(
    "verifier",
    "verifier.name",
    _builtins(
        "pivotrl_nemo",
        {
            "bfcl_state": "domains.bfcl.verifier:BfclStateVerifier",
            "tool_call_args": "verifiers.tool_call_args:ToolCallArgsVerifier",
            "tool_call_schema": "verifiers.tool_call_schema:ToolCallSchemaVerifier",
            "strict": "verifiers.strict:StrictVerifier",
        },
    ),
)
"""Functional verifiers (``verifiers.base.Verifier``): a class taking a ``VerifierConfig``."""

DOMAINS: Registry[Any] = Registry(
    "domain",
    "data.source",
    _builtins(
        "pivotrl_nemo",
        {
            "bfcl": "domains.bfcl.domain:BfclDomain",
            "jsonl": "domains.jsonl:JsonlDomain",
            "toy": "domains.toy:ToyDomain",
        },
    ),
)
"""Trajectory sources (``domains.base.Domain``): a class taking the ``DataConfig``."""

ENGINES: Registry[Any] = Registry(
    "rollout engine",
    "rollout.engine",
    _builtins(
        "pivotrl_nemo",
        {
            "hf": "rollout.hf:HFRolloutEngine",
            "vllm": "rollout.vllm:VLLMRolloutEngine",
        },
    ),
)
"""Rollout engines (``rollout.base.RolloutEngine``) with a ``from_config`` class method."""

MODEL_SOURCES: Registry[Any] = Registry(
    "model source",
    "model_from",
    _builtins("pivotrl_nemo", {"smollm2": "models.megatron.hf.sources:SMOLLM2"}),
)
"""Pretrained models named by ``model_from=<name>`` (``models.megatron.hf.sources.ModelSource``):
the ``model.*`` keys that describe one, and its Hugging Face folder, made on first use."""

MODEL_ARCHS: Registry[Any] = Registry(
    "model architecture",
    "model.arch",
    _builtins(
        "pivotrl_nemo",
        {"gpt": "models.megatron.build:construct_gpt", "hybrid": "models.megatron.hybrid:construct_hybrid"},
    ),
)
"""Policy architecture families: ``construct(cfg, transformer_config, vocab_size, pre_process,
post_process, pg_collection) -> megatron module`` (``models.megatron.build.build_model`` does the
rest: process groups, seeding, device, router freezing)."""

HF_FAMILIES: Registry[Any] = Registry(
    "Hugging Face family",
    "model.arch",
    _builtins(
        "pivotrl_nemo",
        {
            "gpt": "models.megatron.hf.importer:GPT_FAMILY",
            "hybrid": "models.megatron.hf.nemotron_h:NEMOTRON_H_FAMILY",
        },
    ),
)
"""The Hugging Face twin of each ``MODEL_ARCHS`` entry (``models.megatron.hf.family.HFFamily``):
its config, names and tensor layouts for import, export and weight sync."""
