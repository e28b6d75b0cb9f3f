"""Process-level objects the model stages share: tokenizer, verifier, megatron policies, engines.

One ``Runtime`` belongs to one ``Runner`` (so ``pivotrl run`` pays for imports and the tokenizer
once); everything is built lazily on first use, so ``build`` or ``extract`` never import torch's
distributed stack or megatron.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

from pivotrl_nemo.config.schema import ModelConfig, OptimConfig, ParallelConfig, PivotRLConfig
from pivotrl_nemo.distributed import env
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.registry import ENGINES, MODEL_SOURCES
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import publish_dir
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.verifiers.registry import build_verifier

log = get_logger(__name__)


def padded_vocab_size(n: int, multiple: int = 128) -> int:
    """Round the tokenizer size up, as megatron's make_vocab_size_divisible_by does."""
    return ((n + multiple - 1) // multiple) * multiple


VOCAB_PADDING_LIMIT = 1024
"""Embedding rows may exceed the tokenizer's size by padding up to the next multiple of this
(Qwen3: 151,669 tokens, 151,936 rows); more means another tokenizer's rows."""


class VocabularyError(UserError, ValueError):
    """The tokenizer, ``model.vocab_size`` and the initial checkpoint disagree on the vocabulary."""


def vocabulary_rows(tokens: int, model: ModelConfig, checkpoint_rows: int | None = None) -> int:
    """The policy's embedding rows, after the one vocabulary check: the tokenizer's ``tokens``,
    the configured ``model.vocab_size`` (0: the tokenizer's padded to 128) and the rows of
    ``model.init_checkpoint`` (``checkpoint_rows``) must agree (``VocabularyError`` naming all
    three and the fix otherwise)."""
    configured = model.vocab_size or None
    rows = checkpoint_rows or configured or padded_vocab_size(tokens)
    limit = padded_vocab_size(tokens, VOCAB_PADDING_LIMIT)
    if (configured is None or checkpoint_rows is None or configured == checkpoint_rows) and tokens <= rows <= limit:
        return rows
    if model.tokenizer_vocab_size > 0:
        tok = f"the domain BPE that build trains (model.tokenizer_vocab_size={model.tokenizer_vocab_size})"
        fix = (
            "set model.tokenizer_vocab_size=0 and model.tokenizer to the checkpoint's own tokenizer "
            "(model_from=<the import's out dir> sets both)"
        )
    else:
        tok = f"model.tokenizer={model.tokenizer}"
        fix = "set model.tokenizer to the tokenizer the checkpoint was trained with"
        if configured is not None and checkpoint_rows is not None and tokens <= checkpoint_rows <= limit:
            fix = f"set model.vocab_size={checkpoint_rows} (the checkpoint's rows) or 0"
    ckpt = (
        f"model.init_checkpoint={model.init_checkpoint} has {checkpoint_rows} embedding rows"
        if checkpoint_rows is not None
        else "no model.init_checkpoint"
    )
    raise VocabularyError(
        f"vocabulary mismatch: {tok} has {tokens} tokens, model.vocab_size={model.vocab_size}"
        f"{' (0: the tokenizer size padded to 128)' if configured is None else ''} and {ckpt}. They "
        f"must agree: rows >= the tokenizer's {tokens} tokens, padded at most to the next multiple "
        f"of {VOCAB_PADDING_LIMIT} ({limit}), and model.vocab_size (when set) = the checkpoint's "
        f"rows. Fix: {fix}"
    )


def single_rank_layout(cfg: PivotRLConfig) -> ParallelConfig:
    """The layout this process runs: ``cfg.parallel`` when launched among several ranks; in a
    process alone (build, SFT, eval, or a laptop run), the single-rank layout. Checkpoints
    reshard, so a single-rank pi_0 trains at any layout and vice versa."""
    p = cfg.parallel
    if env.world_size() == 1 and p != ParallelConfig():
        log.info("one process: running the single-rank layout instead of parallel=%s", p)
        return ParallelConfig()
    return p


def checkpoint_exists(path: str) -> bool:
    """Whether ``path`` is a complete checkpoint (a root with ``latest``, or a step directory)."""
    p = Path(path)
    return (p / "latest").is_file() or (p / "meta.json").is_file()


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
    def init_checkpoint(self) -> str | None:
        """``model.init_checkpoint``; for a registered model source (``model_from=<name>``)
        imported from its Hugging Face folder by the first process that needs it."""
        init, name = self.cfg.model.init_checkpoint, self.cfg.model_from
        source = MODEL_SOURCES.get(name) if name in MODEL_SOURCES else None
        if init and source is not None and Path(init) == source.checkpoint_dir() and not source.checkpoint_is_current():
            if env.world_size() > 1:
                raise UserError(
                    f"model_from={name}: its megatron checkpoint {init} is made on first use by one "
                    "process; run `pivotrl sft ...` (or any stage) once without torchrun first, with "
                    "PIVOTRL_CACHE on a file system every node sees"
                )
            from pivotrl_nemo.pipeline.hf_commands import import_stage  # lazy: megatron, transformers

            log.info("model_from=%s: importing it into %s (once)", name, init)
            hf = source.hf_folder()
            fp32 = dataclasses.replace(self.cfg, model=dataclasses.replace(self.cfg.model, params_dtype="float32"))
            publish_dir(init, lambda tmp: import_stage(fp32, hf, tmp, overwrite=True), source.record())
        return init

    @cached_property
    def vocab_size(self) -> int:
        """The policy's embedding rows after the vocabulary check (``vocabulary_rows``): the
        tokenizer's size padded to 128 for a model trained from scratch; an initial checkpoint's
        own rows (e.g. Qwen3's 151,936)."""
        init = self.cfg.model.init_checkpoint
        if init and self.cfg.model.vocab_size and not checkpoint_exists(init):
            # not there (moved, or a model source not imported yet): the configured rows stand in
            # for its own, and the stage that loads it imports or refuses it then
            init = None
        rows = None
        ready = self.init_checkpoint if init else None
        if ready:
            from pivotrl_nemo.models.megatron.checkpoint import read_meta  # lazy: megatron

            rows = int(read_meta(ready)["vocab_size"])
        return vocabulary_rows(len(self.tokenizer), self.cfg.model, rows)

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

    @property
    def pi0_checkpoint(self) -> Path:
        """Where pi_0 is: the sft stage's checkpoint, or with ``sft.steps=0`` the initial
        checkpoint itself (the sft stage then writes none)."""
        init = self.init_checkpoint if self.cfg.sft.steps == 0 else None
        return Path(init) if init else self.layout.sft_checkpoint

    def pi0(self, optim: OptimConfig | None = None, total_steps: int = 1) -> Any:
        """pi_0: a policy loaded from ``pi0_checkpoint`` (weights only)."""
        policy = self.new_policy(optim or self.cfg.algorithm.optim, total_steps=total_steps)
        policy.load(self.pi0_checkpoint, load_optimizer=False)
        return policy

    def engine_for(self, policy: Any) -> tuple[Any, Any]:
        """A rollout engine holding ``policy``'s current weights and the synchronizer that
        refreshes them after every optimizer step (the engine ``rollout.engine`` names)."""
        cls = ENGINES.get(self.cfg.rollout.engine)
        return cls.from_config(self.cfg, policy.model, self.tokenizer, self.vocab_size, self.stop_ids)

    def sampler_for(self, engine: Any) -> Any:
        from pivotrl_nemo.algorithms.rollouts import TurnSampler  # lazy: torch

        return TurnSampler(engine, self.tokenizer, self.cfg.data, self.verifier)
