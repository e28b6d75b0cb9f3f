"""Process-level objects the model stages share: tokenizer, verifier, megatron policies, engines.

One ``Runtime`` belongs to one ``Runner`` (so ``pivotrl run`` pays for imports and the tokenizer
once); everything is built lazily on first use, so ``build`` or ``extract`` never import torch's
distributed stack or megatron.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pivotrl_nemo.config.schema import OptimConfig, ParallelConfig, PivotRLConfig
from pivotrl_nemo.distributed import env
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.registry import ENGINES
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.verifiers.registry import build_verifier

log = get_logger(__name__)


def padded_vocab_size(n: int, multiple: int = 128) -> int:
    """Round the tokenizer size up, as megatron's make_vocab_size_divisible_by does."""
    return ((n + multiple - 1) // multiple) * multiple


def single_rank_layout(cfg: PivotRLConfig) -> ParallelConfig:
    """The layout this process runs: ``cfg.parallel`` when launched among several ranks; in a
    process alone (build, SFT, eval, or a laptop run), the single-rank layout. Checkpoints
    reshard, so a single-rank pi_0 trains at any layout and vice versa."""
    p = cfg.parallel
    if env.world_size() == 1 and p != ParallelConfig():
        log.info("one process: running the single-rank layout instead of parallel=%s", p)
        return ParallelConfig()
    return p


class Runtime:
    """Lazily built, shared by the stages of one process (see the module docstring)."""

    def __init__(self, cfg: PivotRLConfig, layout: RunLayout | None = None) -> None:
        self.cfg = cfg
        self.layout = layout or RunLayout.of(cfg.run_dir)

    @cached_property
    def tokenizer(self) -> Any:
        """The run's tokenizer: the domain tokenizer ``build`` trained, or the configured one."""
        from pivotrl_nemo.data.tokenizer import load_tokenizer  # lazy: transformers

        if self.cfg.model.tokenizer_vocab_size > 0:
            path = self.layout.tokenizer
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: model.tokenizer_vocab_size > 0 needs the build stage first"
                )
            return load_tokenizer(str(path))
        return load_tokenizer(self.cfg.model.tokenizer)

    @cached_property
    def vocab_size(self) -> int:
        """The policy's vocabulary: the tokenizer's, padded to a multiple of 128; or that of
        ``model.init_checkpoint`` (an imported model keeps its own, e.g. Qwen3's 151,936)."""
        init = self.cfg.model.init_checkpoint
        if not init:
            return padded_vocab_size(len(self.tokenizer))
        from pivotrl_nemo.models.megatron.checkpoint import read_meta  # lazy: megatron

        vocab = int(read_meta(init)["vocab_size"])
        if vocab < len(self.tokenizer):
            raise ValueError(
                f"model.init_checkpoint={init} has a {vocab}-token vocabulary, smaller than the "
                f"tokenizer's {len(self.tokenizer)} (model.tokenizer={self.cfg.model.tokenizer})"
            )
        return vocab

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @cached_property
    def stop_ids(self) -> list[int]:
        from pivotrl_nemo.data.tokenizer import end_of_turn_token_ids  # lazy: transformers

        return end_of_turn_token_ids(self.tokenizer)

    @cached_property
    def verifier(self) -> Any:
        return build_verifier(self.cfg.verifier.name, self.cfg.verifier)

    @cached_property
    def parallel(self) -> ParallelConfig:
        return single_rank_layout(self.cfg)

    def init_distributed(self) -> None:
        from pivotrl_nemo.distributed.setup import init_distributed  # lazy: torch.distributed, megatron

        init_distributed(self.parallel, seed=self.cfg.model.seed)

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a process alone)."""
        if env.world_size() > 1:
            from pivotrl_nemo.distributed.dp import current_dp  # lazy: torch.distributed

            current_dp().barrier()

    def new_policy(self, optim: OptimConfig, total_steps: int, freeze_router: bool | None = None) -> Any:
        """A freshly initialised megatron policy with its optimizer (router frozen per
        ``model.moe_router_freeze`` unless ``freeze_router`` says otherwise)."""
        self.init_distributed()
        from pivotrl_nemo.models.megatron.policy import MegatronPolicy  # lazy: megatron

        return MegatronPolicy(
            self.cfg.model,
            self.vocab_size,
            optim,
            total_steps=total_steps,
            parallel=self.parallel,
            freeze_router=freeze_router,
        )

    def pi0(self, optim: OptimConfig | None = None, total_steps: int = 1) -> Any:
        """pi_0: a policy loaded from the sft stage's checkpoint (weights only)."""
        policy = self.new_policy(optim or self.cfg.algorithm.optim, total_steps=total_steps)
        policy.load(self.layout.sft_checkpoint, load_optimizer=False)
        return policy

    def engine_for(self, policy: Any) -> tuple[Any, Any]:
        """A rollout engine holding ``policy``'s current weights and the synchronizer that
        refreshes them after every optimizer step (the engine ``rollout.engine`` names)."""
        cls = ENGINES.get(self.cfg.rollout.engine)
        return cls.from_config(self.cfg, policy.model, self.tokenizer, self.vocab_size, self.stop_ids)

    def sampler_for(self, engine: Any) -> Any:
        from pivotrl_nemo.algorithms.rollouts import TurnSampler  # lazy: torch

        return TurnSampler(engine, self.tokenizer, self.cfg.data, self.verifier)
