"""vLLM rollout engine, colocated with the megatron ranks on the same GPUs (GPU only; extra ``gpu``).

Lifecycle (RolloutEngine, see ``rollout.base``):

1. Built once per process (per torchrun rank) from an HF model directory: config + tokenizer,
   and weights unless ``load_format="dummy"`` (random init; the first ``sync_weights`` loads the
   policy from GPU memory, so nothing is read from disk). ``vllm.LLM`` is created with
   ``enable_sleep_mode=True`` and the worker extension of ``weight_sync.vllm_sync``.
   Under torchrun with several ranks the engine uses vLLM's ``external_launcher`` executor: every
   rank builds its engine in-process (SPMD), ranks ``[k*tp, (k+1)*tp)`` form one engine's tensor
   parallel group, and each group needs the same prompts (the rollouts do not give it that, so
   config validation refuses ``rollout.vllm.tensor_parallel_size > 1`` with several ranks). On one
   rank vLLM's default engine-core process is used and weights travel by CUDA IPC.
2. ``generate``: token ids in, ``Completion`` out (sampled token ids and their log-probs under the
   distribution actually sampled from: ``logprobs_mode="processed_logprobs"``, i.e. after
   temperature and top-p, as the importance ratios need). Wakes the engine if it sleeps.
3. ``sleep()`` before the trainer's forward/backward: level 2 (the default) drops the weights and
   the KV cache, since a full ``sync_weights`` always follows (vLLM keeps the model's buffers
   across it); level 1 copies the weights to host memory and back. ``generate`` refuses to run on
   weights a level-2 sleep discarded until a complete refit has arrived.
4. ``VLLMIPCWeightSynchronizer.sync_weights()`` after every optimizer step: wakes the weights only,
   streams the new ones, wakes the KV cache, resets the prefix cache.

Needs vLLM >= 0.10.2 (V1 engine: sleep tags, ``logprobs_mode``, ``worker_extension_cls``). Nothing
imports vLLM until an engine is constructed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config.schema import PivotRLConfig
from ..distributed import env
from ..models.megatron.hf.mapping import hf_config_for
from ..utils.logging import get_logger
from ..weight_sync.vllm_sync import WORKER_EXTENSION_CLS, VLLMIPCWeightSynchronizer
from .base import Completion, SamplingParams

log = get_logger(__name__)

_TAGS = ("weights", "kv_cache")


def request_seed(seed: int | None, prompt_index: int, n: int = 1) -> int | None:
    """Per-prompt seed of a seeded call of ``n`` samples per prompt. vLLM seeds sample ``j`` of a
    request as ``seed + j``, so prompts' seeds step by ``n``: no two sequences share a stream."""
    if seed is None:
        return None
    return ((int(seed) * 1_000_003 + prompt_index) * n) % (2**63 - 1)


def sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position ``{token_id: Logprob}`` list."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs; the engine must sample with logprobs=0")
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(token_ids)} tokens")
    out = []
    for pos, tok in zip(logprobs, token_ids):
        lp = pos[tok]
        out.append(float(lp.logprob if hasattr(lp, "logprob") else lp))
    return out


def to_completions(request_outputs: Sequence[Any], prompts: Sequence[Sequence[int]], n: int) -> list[list[Completion]]:
    """vLLM ``RequestOutput``s (one per prompt, in prompt order) -> ``Completion`` lists."""
    if len(request_outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(request_outputs)} results for {len(prompts)} prompts")
    result = []
    for prompt, ro in zip(prompts, request_outputs):
        outs = sorted(ro.outputs, key=lambda o: o.index)
        if len(outs) != n:
            raise RuntimeError(f"vLLM returned {len(outs)} samples for a prompt, expected {n}")
        comps = []
        for o in outs:
            ids = [int(t) for t in o.token_ids]
            comps.append(
                Completion(
                    text=o.text,
                    token_ids=ids,
                    logprobs=sampled_logprobs(ids, o.logprobs),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                    prompt_token_ids=list(prompt),
                )
            )
        result.append(comps)
    return result


def default_executor() -> str | None:
    """``external_launcher`` when the job has several ranks (SPMD colocation under torchrun), else
    vLLM's default."""
    return "external_launcher" if env.world_size() > 1 else None


def causal_lm_architecture(model_type: str) -> str:
    """The transformers ``*ForCausalLM`` class name of ``model_type`` (e.g. ``Qwen3MoeForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # lazy: transformers

    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if not arch:
        raise ValueError(f"transformers has no causal-LM class for model_type {model_type!r}; vLLM could not generate")
    return str(arch)


def write_model_dir(hf_config: Any, tokenizer: Any, path: str | os.PathLike) -> str:
    """An HF model directory vLLM can start from with ``load_format="dummy"`` (config + tokenizer only).

    The written config always names the causal-LM class in ``architectures``: a bare config has
    none (only a model's ``save_pretrained`` fills it in), and vLLM then falls back to the
    model type's base ``*Model`` class, a pooling model that refuses ``generate``. ``hf_config``
    itself is not modified."""
    config = copy.deepcopy(hf_config)
    config.architectures = [causal_lm_architecture(config.model_type)]
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


class VLLMRolloutEngine:
    """RolloutEngine over ``vllm.LLM`` (see the module docstring for the lifecycle)."""

    def __init__(
        self,
        model_path: str,
        stop_token_ids: list[int],
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        seed: int = 0,
        sleep_level: int = 2,
        load_format: str = "auto",
        executor: str | None = "auto",
        enforce_eager: bool = False,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import vllm  # lazy: optional GPU-only extra, seconds to import
        except ImportError as e:
            raise ImportError(
                "rollout.engine=vllm needs vLLM and a CUDA GPU: pip install 'pivotrl_nemo[gpu]' or "
                "use the NGC image (see Dockerfile); on CPU use rollout=hf"
            ) from e
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        if not stop_token_ids:
            raise ValueError("stop_token_ids must name at least one token (end of turn)")
        self.executor = default_executor() if executor == "auto" else executor
        if self.executor == "external_launcher":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.in_process = (
            self.executor == "external_launcher" or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        )
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        self.sleep_level = sleep_level
        self._weights_discarded = False  # a level-2 sleep dropped them; a complete refit restores them
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            enable_sleep_mode=True,
            worker_extension_cls=WORKER_EXTENSION_CLS,
            load_format=load_format,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.executor is not None:
            kwargs["distributed_executor_backend"] = self.executor
        kwargs.update(llm_kwargs or {})
        log.info(
            "vLLM %s engine: %s (tp=%d, executor=%s, sleep level %d, load_format=%s)",
            vllm.__version__,
            model_path,
            tensor_parallel_size,
            self.executor or "default",
            sleep_level,
            load_format,
        )
        self.llm = vllm.LLM(**kwargs)
        self._asleep: set[str] = set()

    @classmethod
    def from_config(
        cls, cfg: PivotRLConfig, policy_model: torch.nn.Module, tokenizer: Any, vocab_size: int, stop_ids: list[int]
    ) -> tuple[VLLMRolloutEngine, VLLMIPCWeightSynchronizer]:
        """The engine of ``rollout.engine=vllm``, colocated on this rank's GPU, and the
        ``VLLMIPCWeightSynchronizer`` that refits it from ``policy_model`` (the trained megatron
        model, any layout), already synced once: the engine holds the policy's current weights on
        return. vLLM starts from ``<run_dir>/vllm_model`` (the HF twin's config and the tokenizer,
        ``load_format="dummy"``: no weights on disk). Reads ``rollout.vllm.*``, ``model.params_dtype``,
        the longest prompt + action and ``seed``. A collective under model parallelism (the sync)."""
        v = cfg.rollout.vllm
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model_dir = write_model_dir(
            hf_config_for(cfg.model, vocab_size, **ids), tokenizer, Path(cfg.run_dir) / "vllm_model"
        )
        engine = cls(
            model_dir,
            stop_ids,
            tensor_parallel_size=v.tensor_parallel_size,
            gpu_memory_utilization=v.gpu_memory_utilization,
            dtype=cfg.model.params_dtype,
            max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens,
            seed=cfg.seed,
            sleep_level=v.sleep_level,
            load_format="dummy",
            enforce_eager=v.enforce_eager,
        )
        sync = VLLMIPCWeightSynchronizer(policy_model, cfg.model, engine)
        sync.sync_weights()
        return engine, sync

    # ------------------------------------------------------------------ RolloutEngine
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams  # lazy: optional GPU-only extra

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        self.wake()
        if self._weights_discarded:
            raise RuntimeError(
                "the vLLM engine slept at level 2 (weights discarded) and no weight sync has refilled them: "
                "call the synchronizer's sync_weights() before generating, or use rollout.vllm.sleep_level=1"
            )
        params = [
            VLLMSamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=request_seed(sampling.seed, sampling.stream_key(i), n),
                logprobs=0,
                stop_token_ids=self.stop_token_ids,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return to_completions(outs, prompts, n)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (all of them) through the bucketed refit path."""
        tensors = list(named_tensors)
        VLLMIPCWeightSynchronizer(None, None, self, named_tensors=lambda: tensors).sync_weights()

    def sleep(self) -> None:
        """Free GPU memory for training (weights offloaded at level 1, discarded at level 2; KV cache dropped)."""
        if not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = set(_TAGS)
            self._weights_discarded = self._weights_discarded or self.sleep_level == 2

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Re-allocate what ``sleep`` freed (all of it, or only ``tags``: 'weights', 'kv_cache')."""
        todo = [t for t in (tags or _TAGS) if t in self._asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep.difference_update(todo)

    # ------------------------------------------------------------------ used by VLLMIPCWeightSynchronizer
    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        """Call a ``VLLMWeightSyncExtension`` method on every worker of this engine."""
        return self.llm.collective_rpc(method, args=args)

    def wake_for_weight_update(self) -> None:
        """Before streaming weights: wake the weights only (the KV cache stays released)."""
        self.wake(["weights"])

    def finish_weight_update(self) -> None:
        """After streaming: re-allocate the KV cache and forget prefixes cached under old weights."""
        self.wake(["kv_cache"])
        self.llm.reset_prefix_cache()
        self._weights_discarded = False  # the extension checked that every engine parameter was loaded
