"""Process groups for megatron-core: torch.distributed + ``parallel_state`` + model-parallel RNG.

Lifecycle: ``init_distributed(parallel_cfg, seed)`` once per process before building a model
(idempotent: a second call with the same layout only re-seeds); ``destroy()`` at the end (tests
call it between cases). The returned ``DistributedContext`` carries the process groups
explicitly (a megatron ``ProcessGroupCollection``) so model building, the optimizer and weight
sync never reach for globals they were not handed.

Launch modes (the ranks come from ``distributed.env.launch``):
- torchrun (``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` set): ``env://``.
- Slurm (``SLURM_NTASKS`` > 1 and ``SLURM_PROCID``, ``MASTER_ADDR``/``MASTER_PORT`` exported by
  the batch script): ranks from the Slurm variables, rendezvous through ``env://``.
- Alone: a world of one over a TCP store on 127.0.0.1 and a free port.

The backend is NCCL when CUDA is available and gloo otherwise; on a machine without CUDA the
megatron-core compatibility layer (``distributed.cpu_compat``) is applied first.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from pivotrl_nemo.config.schema import ParallelConfig
from pivotrl_nemo.distributed import env
from pivotrl_nemo.distributed.cpu_compat import apply_cpu_compat
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """What ``init_distributed`` set up for this process."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (selects the GPU)."""
    backend: str
    """'gloo' or 'nccl'."""
    parallel: ParallelConfig
    """The model-parallel layout ``parallel_state`` was initialized with."""
    pg_collection: Any
    """megatron ``ProcessGroupCollection`` of this layout (tp, pp, ep, dp, ...)."""


_CONTEXT: DistributedContext | None = None
_OWNS_DEFAULT_GROUP = False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_default_group(backend: str) -> None:
    global _OWNS_DEFAULT_GROUP
    launch = env.launch()
    rank, world_size, local_rank = launch.rank, launch.world_size, launch.local_rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if world_size == 1 and "MASTER_ADDR" not in os.environ:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    else:
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"{var} is not set: launch with torchrun, or export it in the Slurm script")
        init_method = "env://"
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size)
    _OWNS_DEFAULT_GROUP = True
    logger.info("torch.distributed: %s, rank %d of %d", backend, rank, world_size)


def _expert_tensor_parallel_size(parallel_cfg: ParallelConfig) -> int:
    """Expert TP with megatron's default resolved (null = TP, as in ``TransformerConfig``)."""
    etp = parallel_cfg.expert_tensor_parallel_size
    return parallel_cfg.tensor_model_parallel_size if etp is None else etp


def _layout_matches(parallel_cfg: ParallelConfig) -> bool:
    from megatron.core import parallel_state as ps  # lazy: megatron

    return (
        ps.get_tensor_model_parallel_world_size() == parallel_cfg.tensor_model_parallel_size
        and ps.get_pipeline_model_parallel_world_size() == parallel_cfg.pipeline_model_parallel_size
        and ps.get_expert_model_parallel_world_size() == parallel_cfg.expert_model_parallel_size
        and ps.get_expert_tensor_parallel_world_size() == _expert_tensor_parallel_size(parallel_cfg)
    )


def seed_everything(seed: int) -> None:
    """Seed torch's global generator and megatron's model-parallel RNG tracker.

    Call after ``init_distributed``; model construction calls it with the model's seed so weight
    init does not depend on what consumed random numbers before.
    """
    from megatron.core import tensor_parallel  # lazy: megatron

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init_distributed(parallel_cfg: ParallelConfig, seed: int = 0) -> DistributedContext:
    """Initialize torch.distributed (if needed), megatron's ``parallel_state`` and the RNGs.

    Idempotent: when already initialized with the same layout, only re-seeds and returns the
    existing context. Raises when ``parallel_state`` is initialized with a different layout
    (call ``destroy()`` first).
    """
    global _CONTEXT
    from megatron.core import parallel_state as ps  # lazy: megatron
    from megatron.core.process_groups_config import ProcessGroupCollection  # lazy: megatron

    cuda = torch.cuda.is_available()
    if not cuda:
        apply_cpu_compat()
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        _init_default_group(backend)
    world_size = dist.get_world_size()
    model_parallel = parallel_cfg.tensor_model_parallel_size * parallel_cfg.pipeline_model_parallel_size
    if world_size % model_parallel != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_model_parallel_size x "
            f"pipeline_model_parallel_size = {model_parallel}; change parallel.* or the number of ranks"
        )
    expert_parallel = (
        _expert_tensor_parallel_size(parallel_cfg)
        * parallel_cfg.expert_model_parallel_size
        * parallel_cfg.pipeline_model_parallel_size
    )
    if world_size % expert_parallel != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by expert_tensor_parallel_size x "
            f"expert_model_parallel_size x pipeline_model_parallel_size = {expert_parallel}; "
            "change parallel.* or the number of ranks"
        )
    if ps.model_parallel_is_initialized():
        if not _layout_matches(parallel_cfg):
            raise RuntimeError(
                "megatron parallel_state is already initialized with another layout; "
                "call pivotrl_nemo.distributed.setup.destroy() first"
            )
    else:
        ps.initialize_model_parallel(
            tensor_model_parallel_size=parallel_cfg.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel_cfg.pipeline_model_parallel_size,
            expert_model_parallel_size=parallel_cfg.expert_model_parallel_size,
            # the same expert TP the model's TransformerConfig gets (build.transformer_config), or
            # the expert groups would be cut at TP while the experts are sharded at this size
            expert_tensor_parallel_size=parallel_cfg.expert_tensor_parallel_size,
            create_gloo_process_groups=True,
        )
    seed_everything(seed)
    if _CONTEXT is None or _CONTEXT.parallel != parallel_cfg:
        _CONTEXT = DistributedContext(
            rank=dist.get_rank(),
            world_size=world_size,
            local_rank=env.launch().local_rank,
            backend=dist.get_backend(),
            parallel=parallel_cfg,
            pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
        )
    return _CONTEXT


def get_context() -> DistributedContext:
    """The context of the last ``init_distributed`` call."""
    if _CONTEXT is None:
        raise RuntimeError("init_distributed() has not been called")
    return _CONTEXT


def destroy(keep_default_group: bool = False) -> None:
    """Tear down ``parallel_state`` and the default process group if this module created it.

    ``keep_default_group=True`` keeps torch.distributed up so ``init_distributed`` can build
    another layout over the same ranks (re-creating the default group in one process is fragile).
    """
    global _CONTEXT, _OWNS_DEFAULT_GROUP
    from megatron.core import parallel_state as ps  # lazy: megatron
    from megatron.core.tensor_parallel import random as mp_random  # lazy: megatron

    ps.destroy_model_parallel()
    mp_random.initialize_rng_tracker(force_reset=True)
    _CONTEXT = None
    if keep_default_group:
        return
    if _OWNS_DEFAULT_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWNS_DEFAULT_GROUP = False
