"""Process-level objects every model stage needs: tokenizer, megatron policy, rollout engine.

Built lazily and once per process, so ``pivotrl run`` pays for imports and the tokenizer once.
"""

from __future__ import annotations

from functools import cached_property

from .config.schema import OptimConfig, ParallelConfig, PivotRLConfig
from .utils.logging import get_logger

log = get_logger(__name__)


def padded_vocab_size(n: int, multiple: int = 128) -> int:
    """Round the tokenizer size up, as megatron's make_vocab_size_divisible_by does."""
    return ((n + multiple - 1) // multiple) * multiple


class Runtime:
    def __init__(self, cfg: PivotRLConfig) -> None:
        self.cfg = cfg

    @cached_property
    def tokenizer(self):
        """The run's tokenizer: the domain tokenizer ``build`` trained, or the configured one."""
        from pathlib import Path

        from .data.tokenizer import load_tokenizer

        if self.cfg.model.tokenizer_vocab_size > 0:
            path = Path(self.cfg.run_dir) / "tokenizer"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: model.tokenizer_vocab_size > 0 needs the build stage first")
            return load_tokenizer(str(path))
        return load_tokenizer(self.cfg.model.tokenizer)

    @cached_property
    def vocab_size(self) -> int:
        """The policy's vocabulary: the tokenizer's, padded to a multiple of 128; or that of
        ``model.init_checkpoint`` (an imported model keeps its own, e.g. Qwen3's 151,936)."""
        init = self.cfg.model.init_checkpoint
        if not init:
            return padded_vocab_size(len(self.tokenizer))
        from .models.megatron.checkpoint import read_meta

        vocab = int(read_meta(init)["vocab_size"])
        if vocab < len(self.tokenizer):
            raise ValueError(f"model.init_checkpoint={init} has a {vocab}-token vocabulary, smaller than the "
                             f"tokenizer's {len(self.tokenizer)} (model.tokenizer={self.cfg.model.tokenizer})")
        return vocab

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @cached_property
    def stop_ids(self) -> list[int]:
        from .data.tokenizer import end_of_turn_token_ids

        return end_of_turn_token_ids(self.tokenizer)

    @cached_property
    def verifier(self):
        from .verifiers.registry import get_verifier

        return get_verifier(self.cfg.verifier)

    @cached_property
    def parallel(self) -> ParallelConfig:
        """The layout this process runs: ``cfg.parallel`` when launched among several ranks; in a
        process alone (build, SFT, eval, or a laptop run), the single-rank layout. Checkpoints
        reshard, so a single-rank pi_0 trains at any layout and vice versa."""
        from .config.validate import _world_size

        p = self.cfg.parallel
        if _world_size() == 1 and p != ParallelConfig():
            log.info("one process: running the single-rank layout instead of parallel=%s", p)
            return ParallelConfig()
        return p

    def _init_distributed(self) -> None:
        from .distributed.setup import init_distributed

        init_distributed(self.parallel, seed=self.cfg.model.seed)

    def new_policy(self, optim: OptimConfig, total_steps: int, freeze_router: bool | None = None):
        """A freshly initialised megatron policy with its optimizer (router frozen per
        ``model.moe_router_freeze`` unless ``freeze_router`` says otherwise)."""
        self._init_distributed()
        from .models.megatron.policy import MegatronPolicy

        return MegatronPolicy(self.cfg.model, self.vocab_size, optim, total_steps=total_steps,
                              parallel=self.parallel, freeze_router=freeze_router)

    def engine_for(self, policy):
        """A rollout engine holding ``policy``'s current weights, and the synchronizer that
        refreshes them after every optimizer step: in-process HF (``rollout.engine=hf``) or a
        colocated vLLM engine fed through CUDA IPC (``rollout.engine=vllm``, GPU only)."""
        if self.cfg.rollout.engine == "vllm":
            from pathlib import Path

            from .weight_sync.hf_mapping import hf_config_for

            from .rollout.vllm import VLLMRolloutEngine, write_model_dir
            from .weight_sync.vllm_sync import VLLMIPCWeightSynchronizer

            r = self.cfg.rollout
            ids = dict(bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
                       pad_token_id=self.tokenizer.pad_token_id)
            model_dir = write_model_dir(hf_config_for(self.cfg.model, self.vocab_size, **ids), self.tokenizer,
                                        Path(self.cfg.run_dir) / "vllm_model")
            engine = VLLMRolloutEngine(model_dir, self.stop_ids, tensor_parallel_size=r.vllm_tensor_parallel_size,
                                       gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                                       dtype=self.cfg.model.params_dtype,
                                       max_model_len=self.cfg.data.max_prompt_tokens + r.sampling.max_new_tokens,
                                       seed=self.cfg.seed, sleep_level=r.vllm_sleep_level, load_format="dummy",
                                       enforce_eager=r.vllm_enforce_eager)
            sync = VLLMIPCWeightSynchronizer(policy.model, self.cfg.model, engine)
        else:
            from .rollout.hf import HFRolloutEngine
            from .weight_sync.base import InProcessWeightSynchronizer
            from .weight_sync.hf_mapping import build_hf_model

            hf_model = build_hf_model(self.cfg.model, self.vocab_size, self.tokenizer)
            engine = HFRolloutEngine(hf_model, self.tokenizer, self.cfg.rollout.batch_size, self.stop_ids)
            sync = InProcessWeightSynchronizer(policy.model, self.cfg.model, engine)
        sync.sync_weights()
        return engine, sync

    def sampler_for(self, engine):
        from .algorithms.rollouts import TurnSampler

        return TurnSampler(engine, self.tokenizer, self.cfg.data, self.verifier)
