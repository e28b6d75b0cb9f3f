"""Getting the trainer's new weights into the rollout engine after every optimizer step.

Lifecycle of a ``WeightSynchronizer``:

1. Built once, after the trained policy and the rollout engine exist (the engine starts from
   the same weights, e.g. an HF model built from ``hf_config_for`` and loaded with one sync).
2. ``sync_weights()`` after every optimizer step and before the next ``engine.generate``. All
   ranks of the trainer call it: the tensors come from ``models.megatron.hf.mapping.megatron_to_hf``,
   a collective stream (``sharding.iter_full_state``) that hands every rank every full tensor
   whatever the TP / PP / EP layout, so each rank can feed its own engine. A colocated engine
   must be awake.
3. Nothing to tear down: a synchronizer holds references, not copies.

``InProcessWeightSynchronizer``: the engine lives in the trainer's process (CPU quickstart, one
GPU, or one engine per rank) and receives HF-named tensors straight from ``megatron_to_hf``.
Engines load them with ``models.megatron.hf.mapping.load_named_tensors_into``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.models.megatron.hf.mapping import megatron_to_hf
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)


class WeightSynchronizer(Protocol):
    """Pushes the trained policy's current weights to a rollout engine (module docstring: lifecycle)."""

    def sync_weights(self) -> None:
        """Make the engine's next ``generate`` use the policy's current weights."""
        ...


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
