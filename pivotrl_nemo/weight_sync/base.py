"""Getting the trainer's new weights into the rollout engine after every optimizer step.

Lifecycle of a ``WeightSynchronizer``:

1. Built once, after the trained policy and the rollout engine exist (the engine starts from
   the same weights, e.g. an HF model built from ``hf_config_for`` and loaded with one sync).
2. ``sync_weights()`` after every optimizer step and before the next ``engine.generate``. All
   ranks of the trainer call it: the tensors come from ``hf_mapping.megatron_to_hf``, a
   collective stream (``sharding.iter_full_state``) that hands every rank every full tensor
   whatever the TP / PP / EP layout, so each rank can feed its own engine. A colocated engine
   must be awake.
3. Nothing to tear down: a synchronizer holds references, not copies.

``InProcessWeightSynchronizer``: the engine lives in the trainer's process (CPU quickstart, one
GPU, or one engine per rank) and receives HF-named tensors straight from ``megatron_to_hf``.
Engines load them with ``load_named_tensors_into``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.weight_sync.hf_mapping import megatron_to_hf

logger = get_logger(__name__)


class WeightSynchronizer(Protocol):
    """Pushes the trained policy's current weights to a rollout engine (module docstring: lifecycle)."""

    def sync_weights(self) -> None:
        """Make the engine's next ``generate`` use the policy's current weights."""
        ...


class WeightLoadError(ValueError):
    """The named tensors do not cover the target model's parameters exactly once."""


@torch.no_grad()
def load_named_tensors_into(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy HF-named tensors into ``model``'s parameters in place; returns how many were copied.

    Every parameter of ``model`` (``named_parameters()``, tied weights once) must be covered
    exactly once, with the same shape; values are cast to the parameter's dtype and device.
    Raises ``WeightLoadError`` naming the missing, unexpected, duplicated or mis-shaped keys.
    Tensors are copied as they stream in, so after an error the model is partly updated and must
    be reloaded before use.
    """
    params = dict(model.named_parameters())
    seen: set[str] = set()
    unexpected: list[str] = []
    duplicated: list[str] = []
    mis_shaped: list[str] = []
    for name, tensor in named_tensors:
        param = params.get(name)
        if param is None:
            unexpected.append(name)
            continue
        if name in seen:
            duplicated.append(name)
            continue
        seen.add(name)
        if tuple(param.shape) != tuple(tensor.shape):
            mis_shaped.append(f"{name}: got {tuple(tensor.shape)}, expected {tuple(param.shape)}")
            continue
        param.copy_(tensor)
    missing = sorted(set(params) - seen)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("duplicated", duplicated), ("mis-shaped", mis_shaped)):
        if keys:
            problems.append(f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    if problems:
        raise WeightLoadError(f"weight load into {type(model).__name__} failed: " + "; ".join(problems))
    return len(seen)


class InProcessWeightSynchronizer:
    """Streams ``megatron_to_hf(model)`` into ``engine.update_weights`` in the same process.

    ``model``: the megatron GPTModel (bare or DDP-wrapped, any layout) being trained; ``cfg``:
    its ``ModelConfig``; ``engine``: a ``rollout.base.RolloutEngine`` (None on a rank without
    one: it still takes part in the collective stream).
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, engine: Any) -> None:
        self.model = model
        self.cfg = cfg
        self.engine = engine
        self.num_syncs = 0
        """How many times ``sync_weights`` completed."""

    def sync_weights(self) -> None:
        """Push every HF-named tensor of the current weights to the engine (collective: every
        rank of the trainer calls it)."""
        stream = megatron_to_hf(self.model, self.cfg)
        if self.engine is None:
            for _ in stream:
                pass
        else:
            self.engine.update_weights(stream)
        self.num_syncs += 1
        logger.debug("weights synced to %s (sync %d)", type(self.engine).__name__, self.num_syncs)
