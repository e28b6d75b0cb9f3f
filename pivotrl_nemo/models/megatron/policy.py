"""The trained policy: a megatron-core GPTModel, megatron DDP, megatron's optimizer, an LR schedule.

Lifecycle (one optimizer step):

    policy.zero_grad()
    for micro_batch in batch:                       # gradients accumulate in megatron's buffers
        logits = policy.forward_logits(ids)          # or hidden_and_output_weight(ids) + fused kernel
        loss = ...                                   # normalised by the global valid-token count
        loss.backward()
    grad_norm = policy.optimizer_step()              # DP grad sync, LR schedule, clip, Adam update

Megatron's own stack runs on the CPU too: ``DistributedDataParallel`` (contiguous grad buffers,
``param.main_grad``) and ``get_megatron_optimizer`` with the non-distributed optimizer (plain
torch AdamW underneath when Transformer Engine / Apex are absent). Calls with a literal
``device='cuda'`` inside megatron run under ``cpu_compat.cuda_to_cpu()`` (a no-op with CUDA).
The LR follows megatron's ``OptimizerParamScheduler``: linear warm-up from 0 over
``warmup_steps`` optimizer steps (step k, 0-based, uses ``lr * (k+1) / warmup_steps``), then
constant.

Data parallelism: megatron DDP *averages* gradients over data-parallel ranks
(``calculate_per_token_loss=False``); with more than one DP rank a loss normalised by the global
token count must be multiplied by the DP size (or the config switched to per-token loss).

Checkpoints (``save``/``load``) are megatron dist checkpoints written by
``models.megatron.checkpoint``: a root of ``step_<N>/`` directories (model, optimizer, LR schedule,
RNG, the caller's data cursor and config), each written as ``step_<N>.tmp`` and renamed when
complete, a ``latest`` pointer, and retention of the newest few plus the best by a metric. A
checkpoint saved at one TP / PP / EP layout loads at another.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from pivotrl_nemo.distributed.cpu_compat import cuda_to_cpu
from pivotrl_nemo.models.megatron.batching import TokenBatch, gather_hidden
from pivotrl_nemo.models.megatron.build import build_model, router_parameters
from pivotrl_nemo.models.megatron.checkpoint import load_checkpoint, save_checkpoint
from pivotrl_nemo.models.megatron.moe_stats import ExpertLoadTracker
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)


def default_position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` positions 0..S-1 (right-padded batches: pads only follow valid tokens)."""
    b, s = input_ids.shape
    return torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)


def _hidden_and_weight(
    *, hidden_states: torch.Tensor, output_layer: Any, output_weight: Any, config: Any = None, **_: Any
):
    """GPTModel ``output_processor``: final hidden states [B, S, H] and the output weight [V/TP, H].

    Under sequence parallelism the hidden states arrive split along the sequence; they are
    gathered here with a backward that only *splits* the gradient, because the vocab-parallel
    log-prob head (``pivotrl_nemo.kernels``, given the TP group) sums the hidden-state gradient
    over the TP ranks itself (as ``ColumnParallelLinear`` would).
    """
    weight = output_weight if output_weight is not None else output_layer.weight
    if config is not None and config.sequence_parallel:
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region  # lazy: megatron

        hidden_states = gather_from_sequence_parallel_region(
            hidden_states, tensor_parallel_output_grad=False, group=output_layer.tp_group
        )
    return hidden_states.transpose(0, 1).contiguous(), weight


LossFn = Callable[[int, Any, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
"""``loss_fn(index, micro_batch, hidden [N, H] at its loss positions, output weight [V/TP, H])``
-> (scalar loss already normalised by the global token count, stats). Runs on the last
pipeline stage only."""


class MegatronPolicy:
    """A GPTModel wrapped in megatron DDP, with megatron's optimizer and LR schedule.

    Requires ``distributed.setup.init_distributed`` first. ``vocab_size`` is the tokenizer's
    (padded if TP needs it). ``total_steps`` (optional) is the planned number of optimizer steps,
    used to check the warm-up fits. ``freeze_router`` (default ``model_cfg.moe_router_freeze``)
    keeps the MoE routers out of DDP and the optimizer. See the module docstring for the step
    lifecycle. Attributes: ``gpt`` (the bare GPTModel), ``model`` (its DDP wrapper, what
    ``weight_sync`` reads), ``optimizer``, ``scheduler``, ``step_count``.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        vocab_size: int,
        optim_cfg: OptimConfig,
        total_steps: int | None = None,
        parallel: ParallelConfig | None = None,
        pg_collection: Any = None,
        freeze_router: bool | None = None,
    ) -> None:
        self.model_cfg = model_cfg
        self.optim_cfg = optim_cfg
        self.vocab_size = vocab_size
        self.total_steps = total_steps
        self.parallel = parallel or ParallelConfig()
        self.pg_collection = pg_collection
        if total_steps is not None and 0 < total_steps <= optim_cfg.warmup_steps:
            logger.warning(
                "warmup_steps=%d >= total_steps=%d: the LR never reaches its peak %g",
                optim_cfg.warmup_steps,
                total_steps,
                optim_cfg.lr,
            )
        freeze = model_cfg.moe_router_freeze if freeze_router is None else freeze_router
        cfg = dataclasses.replace(model_cfg, moe_router_freeze=freeze)
        self._wrap(build_model(cfg, vocab_size, self.parallel, pg_collection=pg_collection))
        self.step_count = 0
        """Optimizer steps taken (restored by ``load``)."""

    # ----------------------------------------------------------------------- construction

    def _wrap(self, gpt: Any) -> None:
        """Wrap ``gpt`` in megatron DDP and build the optimizer and LR schedule over its trainable params."""
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig  # lazy: megatron

        self.gpt = gpt
        self.expert_load = None
        """``moe_stats.ExpertLoadTracker`` when the model has experts and ``moe_log_expert_load``."""
        if self.model_cfg.num_experts > 0 and self.model_cfg.moe_log_expert_load:
            self.expert_load = ExpertLoadTracker(gpt, self.model_cfg.num_layers, self.model_cfg.num_experts)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=self.parallel.use_distributed_optimizer,
            check_for_nan_in_grad=False,
        )
        with cuda_to_cpu():
            self.model = DistributedDataParallel(
                config=self.gpt.config,
                ddp_config=ddp_config,
                module=self.gpt,
                pg_collection=getattr(self.gpt, "pg_collection", self.pg_collection),
            )
            self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()

    def freeze_router(self) -> None:
        """Freeze the MoE routers of a policy built without ``freeze_router``.

        Only before the first optimizer step (the optimizer is rebuilt without the routers; its
        state would be lost): a fresh GPTModel with frozen routers takes over the current weights,
        because megatron DDP's gradient hooks on the old parameters cannot be removed. Prefer
        ``MegatronPolicy(..., freeze_router=True)``, which avoids the second model. References to
        ``policy.model``/``policy.gpt`` taken before this call are stale afterwards.
        """
        if not router_parameters(self.gpt):
            return
        if all(not p.requires_grad for _, p in router_parameters(self.gpt)):
            return
        if self.step_count > 0:
            raise RuntimeError(
                "freeze_router() after an optimizer step would drop the optimizer state; "
                "construct MegatronPolicy(..., freeze_router=True) instead"
            )
        weights = self.gpt.state_dict()
        cfg = dataclasses.replace(self.model_cfg, moe_router_freeze=True)
        gpt = build_model(cfg, self.vocab_size, self.parallel, pg_collection=self.pg_collection)
        gpt.load_state_dict(weights, strict=True)
        gpt.train(self.gpt.training)
        self._wrap(gpt)

    def _build_optimizer(self) -> Any:
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # lazy: megatron

        o = self.optim_cfg
        dtype = self.gpt.config.params_dtype
        config = OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            params_dtype=dtype,
            use_distributed_optimizer=self.parallel.use_distributed_optimizer,
        )
        return get_megatron_optimizer(config, [self.model])

    def _build_scheduler(self) -> Any:
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler  # lazy: megatron

        o = self.optim_cfg
        return OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if o.warmup_steps > 0 else o.lr,
            max_lr=o.lr,
            min_lr=o.lr,
            lr_warmup_steps=o.warmup_steps,
            lr_decay_steps=max(o.warmup_steps + 1, self.total_steps or 0),
            lr_decay_style="constant",
            start_wd=o.weight_decay,
            end_wd=o.weight_decay,
            wd_incr_steps=1,
            wd_incr_style="constant",
        )

    # ----------------------------------------------------------------------- forward

    def train(self) -> None:
        """Training mode (MoE aux loss active when configured)."""
        self.model.train()

    def eval(self) -> None:  # trusted: the nn.Module-style mode switch, not the eval builtin
        """Evaluation mode."""
        self.model.eval()

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal next-token logits ``[B, S, V]`` in fp32 for right-padded ``input_ids [B, S]``.

        Plain causal attention needs no mask (the local spec builds the causal mask when
        ``attention_mask`` is None); valid tokens never see the pads that follow them.
        ``padding_mask`` ``[B, S]`` (True = pad) only keeps pads out of MoE routing statistics.
        """
        input_ids, position_ids, padding_mask = self._inputs(input_ids, position_ids, padding_mask)
        logits = self.model(input_ids, position_ids, None, padding_mask=padding_mask)
        return logits.float()

    def hidden_and_output_weight(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states ``[B, S, H]`` (after the final norm) and the output weight ``[V, H]``.

        ``logits = hidden @ weight.T`` equals ``forward_logits`` (up to dtype); this skips the
        ``[B, S, V]`` logits so a fused log-prob kernel can compute them blockwise. Under TP the
        weight is this rank's vocab shard.
        """
        input_ids, position_ids, padding_mask = self._inputs(input_ids, position_ids, padding_mask)
        return self.model(input_ids, position_ids, None, padding_mask=padding_mask, output_processor=_hidden_and_weight)

    @property
    def tp_group(self) -> Any:
        """The tensor-parallel group the output weight is split over (None at TP=1)."""
        group = self.gpt.pg_collection.tp
        return group if group.size() > 1 else None

    @property
    def is_last_stage(self) -> bool:
        """Whether this rank holds the output layer (the only stage that computes losses)."""
        return bool(self.gpt.post_process)

    def forward_backward(self, micro_batches: list[Any], loss_fn: LossFn, forward_only: bool = False) -> list[dict]:
        """Forward (and backward) every micro-batch through megatron's schedule; gradients
        accumulate in the DDP buffers (call ``zero_grad`` before, ``optimizer_step`` after).

        ``micro_batches`` are ``models.megatron.batching.TokenBatch``es (right-padded ``input_ids``,
        ``loss_index`` of the loss positions). ``get_forward_backward_func`` picks 1F1B under
        pipeline parallelism (shapes exchanged per micro-batch: ``variable_seq_lengths``) and a
        plain loop otherwise. Megatron divides each micro-batch's loss by the number of
        micro-batches; it is multiplied back here, so ``loss_fn``'s normalisation (the global
        valid-token count) is what the gradient sees. Returns ``loss_fn``'s stats per micro-batch
        on the last pipeline stage and ``[]`` on other stages.
        """
        from megatron.core.pipeline_parallel import get_forward_backward_func  # lazy: megatron

        real = len(micro_batches)
        n = self._global_microbatches(real)
        if n == 0:
            return []
        micro_batches = list(micro_batches) + [self._empty_batch()] * (n - real)
        stats: list[dict] = []

        def loss_of(i: int, batch: Any, output: Any):
            hidden, weight = output
            if i >= real:  # padding micro-batch: runs the expert collectives, adds nothing
                return hidden.sum() * 0.0, {}
            loss, st = loss_fn(i, batch, gather_hidden(hidden, batch), weight)
            stats.append(st)
            return loss * n, {}

        def forward_step(data_iterator: Any, model: Any):
            i, batch = next(data_iterator)
            ids, pos, pad = self._inputs(batch.input_ids, None, batch.padding_mask())
            out = model(
                ids, pos, None, padding_mask=pad, output_processor=_hidden_and_weight if self.is_last_stage else None
            )
            return out, functools.partial(loss_of, i, batch)

        self.gpt.config.variable_seq_lengths = self.gpt.pg_collection.pp.size() > 1
        widest = max(int(b.input_ids.shape[1]) for b in micro_batches)
        with cuda_to_cpu():
            get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(list(enumerate(micro_batches))),
                model=self.model,
                num_microbatches=n,
                seq_length=widest,
                micro_batch_size=int(micro_batches[0].input_ids.shape[0]),
                forward_only=forward_only,
            )
        return stats

    def _global_microbatches(self, local: int) -> int:
        """How many micro-batches this rank must run. Under expert parallelism the MoE token
        exchange is a collective across data-parallel ranks, so every rank runs as many
        micro-batches as the busiest one (the extra ones are empty); otherwise ``local``."""
        ep = self.gpt.pg_collection.ep
        if ep is None or ep.size() == 1:
            return local
        t = torch.tensor([local], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    @staticmethod
    def _empty_batch() -> Any:
        """A one-token micro-batch with no loss positions (padding for ``_global_microbatches``)."""
        return TokenBatch(
            input_ids=torch.zeros(1, 1, dtype=torch.long),
            loss_index=torch.zeros(0, 2, dtype=torch.long),
            targets=torch.zeros(0, dtype=torch.long),
            seq_of_token=torch.zeros(0, dtype=torch.long),
            lengths=torch.ones(1, dtype=torch.long),
        )

    def pipeline_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over the pipeline stages: what the last stage computed, on every stage
        (other stages pass zeros)."""
        pp = self.gpt.pg_collection.pp
        if pp.size() == 1:
            return [float(v) for v in values]
        t = torch.tensor(
            [float(v) if self.is_last_stage else 0.0 for v in values],
            dtype=torch.float64,
            device="cuda" if dist.get_backend(pp) == "nccl" else "cpu",
        )
        dist.all_reduce(t, group=pp)
        return t.tolist()

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (inputs are moved there)."""
        return next(self.gpt.parameters()).device

    def _inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, padding_mask: torch.Tensor | None):
        """Inputs on the model's device. Under sequence parallelism the sequence is right-padded
        to a multiple of TP (megatron splits it evenly); causal attention keeps the extra
        positions invisible to the real ones, and outputs keep the padded length."""
        device = self.device
        input_ids = input_ids.to(device)
        tp = self.gpt.pg_collection.tp.size()
        extra = (-input_ids.shape[1]) % tp if self.gpt.config.sequence_parallel else 0
        if extra:
            if position_ids is not None:
                raise ValueError(f"explicit position_ids under sequence parallelism need a length divisible by TP={tp}")
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=0)
            if padding_mask is not None:
                padding_mask = torch.nn.functional.pad(padding_mask, (0, extra), value=True)
        position_ids = default_position_ids(input_ids) if position_ids is None else position_ids.to(device)
        return input_ids, position_ids, None if padding_mask is None else padding_mask.to(device)

    # ----------------------------------------------------------------------- step

    def zero_grad(self) -> None:
        """Clear the gradient buffers before accumulating a new step."""
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def optimizer_step(self) -> float:
        """Finish the DP gradient reduction, set the LR, clip, update; returns the grad norm.

        The grad norm is that of the full gradient before clipping (0.0 when clipping is off and
        megatron skips computing it).
        """
        from megatron.core.distributed import finalize_model_grads  # lazy: megatron

        # DP reduction + the TP sums of sequence-parallel / qk-norm grads + tied-embedding grads
        # across pipeline stages (megatron's own post-backward step)
        with cuda_to_cpu():
            finalize_model_grads([self.model], pg_collection=self.gpt.pg_collection)
        self.scheduler.step(1)  # LR for this step: lr * (k+1) / warmup_steps during warm-up
        with cuda_to_cpu():
            ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            logger.warning("optimizer step %d skipped (non-finite gradients)", self.step_count)
        self.step_count += 1
        return float(grad_norm) if grad_norm is not None else 0.0

    def current_lr(self) -> float:
        """The learning rate the last optimizer step used (before any step: the scheduler's start)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def expert_load_metrics(self) -> dict[str, float]:
        """Per-layer expert load since the last call (a collective; {} for dense models)."""
        return self.expert_load.collect() if self.expert_load is not None else {}

    def router_weights(self) -> dict[str, torch.Tensor]:
        """Copies of the MoE router weights, by megatron name (for freeze checks and logging)."""
        return {n: p.detach().clone() for n, p in router_parameters(self.gpt)}

    # ----------------------------------------------------------------------- state

    def save(
        self,
        root: str | os.PathLike,
        step: int | None = None,
        extra: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        config_yaml: str | None = None,
        retention: Any = None,
        save_optimizer: bool = True,
    ) -> Path:
        """Write a dist checkpoint ``root/step_<step>`` (a collective: every rank calls it); returns it.

        ``step`` defaults to ``step_count``; ``extra`` (plain data, e.g. the loop's data cursor)
        comes back from ``load``; ``metrics`` are recorded and rank checkpoints for
        ``retention`` (a ``checkpoint.Retention``: the newest ``keep_last``, default 2, plus the
        best by a metric); ``config_yaml`` is the resolved run config; ``save_optimizer=False``
        writes a weights-only checkpoint (no optimizer state: for checkpoints that are only ever
        loaded with ``load_optimizer=False``). See ``models.megatron.checkpoint`` for the layout
        and the atomicity.
        """
        return save_checkpoint(
            self,
            root,
            self.step_count if step is None else step,
            extra=extra,
            metrics=metrics,
            config_yaml=config_yaml,
            retention=retention,
            save_optimizer=save_optimizer,
        )

    def load(
        self, path: str | os.PathLike, load_optimizer: bool = True, allow_weights_only: bool = False
    ) -> dict[str, Any]:
        """Restore a checkpoint (a step directory, or a root: its latest) saved at any layout;
        returns the ``extra`` dict it was saved with. ``load_optimizer=False`` takes only the
        weights (e.g. pi_0 from the SFT checkpoint): optimizer, schedule, step count and RNG stay.
        A weights-only checkpoint with ``load_optimizer=True`` raises ``CheckpointError`` unless
        ``allow_weights_only``: then everything saved is restored and the optimizer starts fresh
        (not an exact resume; a warning says so)."""
        return load_checkpoint(self, path, load_optimizer=load_optimizer, allow_weights_only=allow_weights_only)
