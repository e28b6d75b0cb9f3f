"""Per-layer expert load of megatron MoE layers, for the training logs.

A forward hook on every router (``TopKRouter.forward -> (probs, routing_map [tokens, experts])``)
adds up how many tokens each expert received during training forwards (padding positions are
excluded when the model is given a ``padding_mask``). ``collect()`` sums the counts over all
ranks (a collective: every rank calls it once per step), resets them, and returns per layer
``max / mean`` tokens per expert (1.0 = perfectly balanced; k-way replication of the same tokens
across TP peers does not change the ratio) and the fraction of experts that received nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class ExpertLoadTracker:
    """Hooks the routers of ``gpt`` (a bare megatron GPTModel or HybridModel); see the module docstring."""

    def __init__(self, gpt: Any, num_layers: int, num_experts: int) -> None:
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.float64)
        self._handles = []
        for layer in gpt.decoder.layers:
            router = getattr(getattr(layer, "mlp", None), "router", None)  # Mamba / attention-only layers: none
            if router is not None:
                index = int(layer.layer_number) - 1
                self._handles.append(router.register_forward_hook(self._hook(index), with_kwargs=True))

    def _hook(self, index: int):
        def hook(module, args, kwargs, output):
            if not module.training or not torch.is_grad_enabled():
                return
            routing_map = output[1].detach()
            mask = kwargs.get("padding_mask", args[1] if len(args) > 1 else None)
            if mask is not None:
                routing_map = routing_map[~mask.reshape(-1).to(routing_map.device)]
            self.counts[index] += routing_map.sum(0).to("cpu", torch.float64)

        return hook

    def collect(self) -> dict[str, float]:
        """Per-layer load metrics since the last call (summed over ranks), then reset."""
        counts = self.counts.clone()
        self.counts.zero_()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            t = counts.to(device)
            dist.all_reduce(t)
            counts = t.cpu()
        out: dict[str, float] = {}
        for layer, row in enumerate(counts):
            total = float(row.sum())
            if total == 0:
                continue
            out[f"moe/layer{layer}_load_max_over_mean"] = float(row.max()) / (total / row.numel())
            out[f"moe/layer{layer}_idle_experts"] = float((row == 0).float().mean())
        if out:
            ratios = [v for k, v in out.items() if k.endswith("max_over_mean")]
            out["moe/load_max_over_mean"] = max(ratios)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
