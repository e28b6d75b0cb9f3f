"""The optimizer's part of a megatron dist checkpoint (``checkpoint.py`` saves and loads it).

Only the sharded entries of each sub-optimizer are stored (Adam moments, fp32 main params: keys
derived from global parameter names, so a checkpoint reshards across layouts), plus Adam's step
as a plain number, wherever the optimizer keeps it (``common_step`` for torch Adam under
megatron's FP32/Float16 optimizers, ``param_groups[*]['step']`` for the DistributedOptimizer and
TE/Apex FusedAdam). Two megatron-core 0.19 gaps of the DistributedOptimizer over torch Adam are
bridged here: it cannot save or load without optimizer state (``_init_distributed_adam_state``),
and its one-call load drops and then shares the step (``_load_distributed_torch_adam``).
"""

from __future__ import annotations

from typing import Any

import torch

from pivotrl_nemo.distributed.cpu_compat import cuda_to_cpu


def sub_optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def optimizer_leaves(policy: Any, model_sd: dict, is_loading: bool) -> tuple[list[Any], dict[str, Any]]:
    """Each sub-optimizer's sharded state dict, and all of their sharded entries ``{"0": .., "1": ..}``
    in traversal order (storage keys are not unique per rank: megatron stacks layers and experts
    as shards of one key, so the container is numbered; what is stored is decided by each entry's
    key and offsets, not by its place in the container).

    Megatron chains one optimizer per parameter kind (dense, and expert parameters when EP > 1),
    so the number of sub-optimizers depends on the layout; ``ChainedOptimizer.sharded_state_dict``
    mirrors that structure. Saving only the sharded entries (per-parameter Adam moments, fp32 main
    params: keys derived from the parameters' global names) and rebuilding every other field from
    the optimizer being loaded into lets a checkpoint load at another EP / TP layout. The optimizer
    step, the only non-sharded state that matters, is saved separately (``optimizer_step``).
    ``distrib_optim_sharding_type='fully_reshardable'`` picks the reshardable format of megatron's
    DistributedOptimizer (the non-distributed optimizers ignore it); one without state yet gets
    it first (``_init_distributed_adam_state``).
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values  # lazy: megatron
    from megatron.core.dist_checkpointing.mapping import ShardedBase  # lazy: megatron

    structs: list[Any] = []
    leaves: dict[str, Any] = {}
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
    with cuda_to_cpu():
        for sub in sub_optimizers(policy.optimizer):
            _init_distributed_adam_state(sub)
            sd = sub.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
            structs.append(sd)
            for leaf in nested_values(sd):
                if isinstance(leaf, ShardedBase):
                    leaves[str(len(leaves))] = leaf
    return structs, leaves


def _init_distributed_adam_state(sub: Any) -> None:
    """Give a DistributedOptimizer over torch Adam/AdamW without state the state its first step
    would create: zero moments and step 0 for every parameter shard.

    Without TE/Apex, megatron's ``DistributedOptimizer.state_dict`` reads the step from each
    parameter's state and asserts it finds exactly one, so it can neither save an optimizer that
    has not stepped yet nor build the request to load into a fresh one. The moments come from the
    optimizer's ``init_state_fn`` (what megatron's other optimizers call before a load); torch
    creates 'step' the same way (0, float32, on the CPU unless capturable/fused), so the next
    update is exactly a fresh optimizer's. TE/Apex FusedAdam keep the step in param_groups and
    need nothing here.
    """
    if not _distributed_torch_adam(sub) or sub.optimizer.state:
        return
    inner = sub.optimizer
    sub.init_state_fn(inner, sub.config)
    for group in inner.param_groups:
        on_param = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            state = inner.state[p]
            state.setdefault("step", torch.zeros((), dtype=torch.float32, device=p.device if on_param else "cpu"))
            if group.get("amsgrad"):
                state.setdefault("max_exp_avg_sq", torch.zeros_like(p, memory_format=torch.preserve_format))


def _distributed_torch_adam(sub: Any) -> bool:
    """Whether ``sub`` is megatron's DistributedOptimizer over torch Adam/AdamW (no TE/Apex)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer  # lazy: megatron

    return isinstance(sub, DistributedOptimizer) and isinstance(getattr(sub, "optimizer", None), torch.optim.Adam)


def _param_state(struct: dict) -> dict | None:
    """The per-parameter ``state`` dict of the torch optimizer inside a megatron sub-optimizer's
    state dict (top level for ``FP32Optimizer``, under 'optimizer' for the mixed-precision ones);
    None where the layout is another (DistributedOptimizer: its per-parameter state is
    'param_state')."""
    inner = struct.get("optimizer")
    inner = inner if isinstance(inner, dict) and "state" in inner else struct
    state = inner.get("state")
    return state if isinstance(state, dict) else None


def _param_groups(struct: dict) -> list[dict]:
    """The torch optimizer's ``param_groups`` inside a megatron sub-optimizer's state dict (top
    level for ``FP32Optimizer``, under 'optimizer' for the others)."""
    inner = struct.get("optimizer")
    inner = inner if isinstance(inner, dict) and "param_groups" in inner else struct
    groups = inner.get("param_groups")
    return groups if isinstance(groups, list) else []


def _step_in_param_groups(sub: Any) -> bool:
    """Whether ``sub`` takes Adam's step from ``param_groups[*]['step']`` on load: megatron's
    DistributedOptimizer always does (it hands the step to torch's per-parameter state itself),
    and so do TE/Apex FusedAdam; torch Adam/AdamW under FP32/Float16Optimizer take the
    per-parameter 'common_step'."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer  # lazy: megatron

    return isinstance(sub, DistributedOptimizer) or not isinstance(getattr(sub, "optimizer", None), torch.optim.Adam)


def optimizer_step(structs: list[dict]) -> int | None:
    """Adam's step, wherever the sub-optimizers keep it: 'common_step' (megatron's per-parameter
    step of torch Adam) or ``param_groups[*]['step']`` (TE/Apex FusedAdam, megatron's
    DistributedOptimizer). Saved as a plain number so that ``restore_optimizer`` can put it where
    the optimizer being loaded into keeps it. All hold the same count, except that FusedAdam does
    not count in groups that had no gradients (megatron aligns them the same way): the largest."""
    steps = []
    for struct in structs:
        common = (_param_state(struct) or {}).get("common_step")
        if common is not None:
            steps.append(float(common))
        steps += [float(g["step"]) for g in _param_groups(struct) if g.get("step") is not None]
    return int(max(steps)) if steps else None


def restore_optimizer(
    policy: Any, structs: list[dict], leaves: dict[str, Any], loaded: dict[str, Any], step: Any
) -> None:
    """Put the loaded optimizer entries back where ``optimizer_leaves`` found them, set Adam's
    step where each sub-optimizer takes it from (``_step_in_param_groups``), and hand each
    sub-optimizer its state dict."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace  # lazy: megatron
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedBase  # lazy: megatron

    slot = {id(leaf): name for name, leaf in leaves.items()}

    def fill(x: Any) -> Any:
        if isinstance(x, ShardedBase):
            return loaded[slot[id(x)]]
        return x.unwrap() if isinstance(x, LocalNonpersistentObject) else x  # e.g. param_groups' params

    step = None if step is None else int(step)  # older checkpoints hold torch Adam's step tensor
    with cuda_to_cpu():
        for sub, sd in zip(sub_optimizers(policy.optimizer), structs):
            dict_list_map_inplace(fill, sd)
            if step is None:  # never stepped: what the optimizer being loaded into has is right
                pass
            elif _step_in_param_groups(sub):
                for group in _param_groups(sd):  # else the loading optimizer's own (fresh) step stays
                    group["step"] = step
            elif state := _param_state(sd):  # a fresh optimizer has step 0, which megatron leaves out
                state["common_step"] = torch.tensor(float(step))  # torch Adam's step: a float32 tensor
            if _distributed_torch_adam(sub) and sd.get("param_state_sharding_type") == "fully_reshardable":
                _load_distributed_torch_adam(sub, sd)
            else:
                sub.load_state_dict(sd)


def _load_distributed_torch_adam(sub: Any, sd: dict) -> None:
    """``DistributedOptimizer.load_state_dict`` in two parts, for torch Adam/AdamW.

    In one call (megatron-core 0.19) it first gives every parameter's torch state a 'step' tensor
    from ``param_groups``, then ``load_parameter_state_from_fully_reshardable`` copies each tensor
    of that state from the loaded entries, which never hold 'step' (megatron leaves it to the
    param_groups): a KeyError. So: param_groups and step first, then the moments and main params
    with 'step' set aside. The step it hands out is one tensor shared by every parameter, which
    torch Adam increments in place once per parameter (the step would grow by the parameter count
    each update): each parameter gets its own copy back.
    """
    param_state = sd.pop("param_state")
    sd.pop("param_state_sharding_type")
    sub.load_state_dict(sd)  # param_groups, the step into each parameter's state, grad scaler
    state = sub.optimizer.state
    steps = {p: s.pop("step") for p, s in state.items() if "step" in s}
    try:
        sub.load_parameter_state_from_fully_reshardable(param_state)
    finally:
        for p, step in steps.items():
            state[p]["step"] = step.clone()
