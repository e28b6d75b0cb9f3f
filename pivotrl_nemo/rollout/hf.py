"""In-process transformers rollout engine (CPU, or one GPU without colocation tricks).

``HFRolloutEngine`` runs its own decoding loop over a ``transformers`` causal LM with a
``DynamicCache``:

* every prompt is expanded ``n`` times; sequences are sorted by prompt length (less padding) and
  processed ``batch_size`` at a time; the distinct prompts of a batch are prefilled once
  (left-padded, position ids counted from each prompt's first real token, only the last
  position's logits computed) and the KV cache is then expanded to the batch's sequences;
* decoding feeds one token per sequence per step; a sequence that emits a stop token (kept in
  ``token_ids``, finish_reason 'stop') or reaches ``max_new_tokens`` ('length') leaves the
  batch: its rows are removed from the cache, so it costs nothing afterwards;
* sampling: temperature 0 is greedy; otherwise inverse-CDF sampling from
  ``softmax(logits / T)``, restricted to the top-p nucleus (and renormalised) when top_p < 1.
  ``logprobs[i]`` is the log-prob of the token under that distribution (for greedy,
  ``log_softmax`` at T=1), computed in float32;
* determinism: sequence (prompt i, sample j) draws its uniforms from its own
  ``torch.Generator`` seeded from (``sampling.seed``, i, j), so the same seed gives the same
  completions, and they do not depend on ``batch_size`` or on the other prompts of the call,
  up to float round-off of batched matmuls (a different batch changes padding and kernel
  shapes, which can flip a near-tie; with a fixed batch composition results are bit-identical).
  ``sampling.seed=None`` draws the base seed from the engine's generator (seeded at construction).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import LinearAttentionLayer

from pivotrl_nemo.config.schema import PivotRLConfig
from pivotrl_nemo.models.megatron.hf.mapping import build_hf_model, load_named_tensors_into
from pivotrl_nemo.rollout.base import Completion, SamplingParams
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.weight_sync.base import InProcessWeightSynchronizer

logger = get_logger(__name__)

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sequence_seed(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sequence (prompt_index, sample_index) of a call seeded with ``base_seed``."""
    x = _mix64(base_seed & _MASK64)
    x = _mix64(x ^ (prompt_index & _MASK64))
    x = _mix64(x ^ (sample_index & _MASK64))
    return x & ((1 << 63) - 1)


def sample_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits`` [B, V] and return (tokens [B], logprobs [B]).

    ``uniforms`` [B] in [0, 1) drive inverse-CDF sampling (ignored when greedy). The logprob is
    under the distribution sampled from: softmax(logits / T), renormalised over the top-p
    nucleus when top_p < 1 (the nucleus is the smallest prefix of tokens sorted by probability
    whose mass reaches top_p; the most likely token is always in it); greedy: log_softmax(logits).
    """
    logits = logits.float()
    if temperature <= 0.0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_lp, sorted_idx = logp.sort(dim=-1, descending=True, stable=True)
        probs = sorted_lp.exp()
        keep = (probs.cumsum(dim=-1) - probs) < top_p
        keep[:, 0] = True
        sorted_lp = sorted_lp.masked_fill(~keep, float("-inf"))
        sorted_lp = sorted_lp - torch.logsumexp(sorted_lp, dim=-1, keepdim=True)
        pos = _inverse_cdf(sorted_lp, uniforms)
        return sorted_idx.gather(-1, pos[:, None]).squeeze(-1), sorted_lp.gather(-1, pos[:, None]).squeeze(-1)
    tokens = _inverse_cdf(logp, uniforms)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _inverse_cdf(logp: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index k with cdf[k-1] <= u * total < cdf[k] (float64 cdf): never a zero-probability token."""
    cdf = logp.double().exp().cumsum(dim=-1)
    u = uniforms.to(device=cdf.device, dtype=torch.float64) * cdf[:, -1]
    idx = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
    return idx.clamp_(max=logp.shape[-1] - 1)


def select_cache_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep only batch rows ``rows`` of a ``DynamicCache``, in place, for every kind of layer:
    attention layers (``batch_select_indices``) and the Mamba layers of hybrid models (their conv
    and SSM states; transformers' ``LinearAttentionLayer`` has only ``reorder_cache``, which is
    the same row selection)."""
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionLayer):  # Mamba states (and any attention part with them)
            layer.reorder_cache(cast(torch.LongTensor, rows))
        else:
            layer.batch_select_indices(rows)


class HFRolloutEngine:
    """RolloutEngine over an in-process transformers causal LM (see the module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        stop_token_ids: list[int],
        *,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"rollout.batch_size must be >= 1, got {batch_size}")
        if not stop_token_ids:
            raise ValueError("stop_token_ids must name at least one token (e.g. end_of_turn_token_ids(tokenizer))")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        self._stop = set(self.stop_token_ids)
        self.progress = progress
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(
        cls,
        cfg: PivotRLConfig,
        policy_model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_ids: list[int],
    ) -> tuple[HFRolloutEngine, InProcessWeightSynchronizer]:
        """The engine of ``rollout.engine=hf`` over an HF twin of ``cfg.model`` (``build_hf_model``:
        on the GPU when there is one), and the ``InProcessWeightSynchronizer`` that refreshes it from
        ``policy_model`` (the trained megatron model, any layout), already synced once: the engine
        holds the policy's current weights on return. Reads ``rollout.batch_size`` and
        ``rollout.hf.*``. A collective under model parallelism (the sync): every rank calls it."""
        hf_model = build_hf_model(cfg.model, vocab_size, tokenizer)
        engine = cls(hf_model, tokenizer, cfg.rollout.batch_size, stop_ids, progress=cfg.rollout.hf.progress)
        sync = InProcessWeightSynchronizer(policy_model, cfg.model, engine)
        sync.sync_weights()
        return engine, sync

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------------------------- API

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """For each prompt, ``n`` completions; result[i][j] is the j-th for prompt i."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.temperature < 0 or not (0.0 < sampling.top_p <= 1.0) or sampling.max_new_tokens < 1:
            raise ValueError(f"invalid sampling parameters {sampling}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        if sampling.seed is not None:
            base_seed = int(sampling.seed)
        else:
            base_seed = int(torch.randint(0, 2**62, (1,), generator=self._generator).item())
        seqs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        order = sorted(range(len(seqs)), key=lambda s: (len(prompts[seqs[s][0]]), s))
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        starts = range(0, len(order), self.batch_size)
        if self.progress:
            starts = tqdm(starts, desc="generate", unit="batch")
        for start in starts:
            batch = [seqs[k] for k in order[start : start + self.batch_size]]
            for (i, j), comp in zip(batch, self._generate_batch(batch, prompts, sampling, base_seed)):
                results[i][j] = comp
        return results  # type: ignore[return-value]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new HF-named weights (all of them, any order) in place, with ``load_named_tensors_into``:
        every parameter exactly once, same shapes, else ``WeightLoadError`` naming the keys (the
        model is then partly updated and must be reloaded)."""
        count = load_named_tensors_into(self.model, named_tensors)
        logger.debug("rollout engine: updated %d tensors", count)

    def sleep(self) -> None:
        """No-op: this engine is not colocated with the trainer (CPU, or its own device)."""

    def wake(self) -> None:
        """No-op: see ``sleep``."""

    # ----------------------------------------------------------------------------- internals

    def _generate_batch(
        self, batch: list[tuple[int, int]], prompts: list[list[int]], sampling: SamplingParams, base_seed: int
    ) -> list[Completion]:
        device = self.device
        model = self.model
        unique: dict[int, int] = {}
        for i, _ in batch:
            unique.setdefault(i, len(unique))
        uprompts = [prompts[i] for i in unique]
        max_len = max(len(p) for p in uprompts)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        ids = torch.full((len(uprompts), max_len), pad_id, dtype=torch.long)
        mask = torch.zeros((len(uprompts), max_len), dtype=torch.long)
        for r, p in enumerate(uprompts):
            ids[r, max_len - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, max_len - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=-1) - 1).clamp_(min=0)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        rows = torch.tensor([unique[i] for i, _ in batch], dtype=torch.long, device=device)
        if len(uprompts) != len(batch) or not torch.equal(rows, torch.arange(len(batch), device=device)):
            select_cache_rows(cache, rows)
            logits, mask = logits[rows], mask[rows]
        next_pos = torch.tensor([len(prompts[i]) for i, _ in batch], dtype=torch.long, device=device)

        gens = [torch.Generator().manual_seed(sequence_seed(base_seed, sampling.stream_key(i), j)) for i, j in batch]
        tokens: list[list[int]] = [[] for _ in batch]
        logprobs: list[list[float]] = [[] for _ in batch]
        finish: list[str] = ["length"] * len(batch)
        active = list(range(len(batch)))  # original row of each row of the live tensors
        for _ in range(sampling.max_new_tokens):
            uniforms = torch.cat([torch.rand(1, generator=gens[r]) for r in active])
            tok, lp = sample_tokens(logits, uniforms, sampling.temperature, sampling.top_p)
            tok_list, lp_list = tok.tolist(), lp.tolist()
            keep: list[int] = []
            for local, r in enumerate(active):
                tokens[r].append(tok_list[local])
                logprobs[r].append(lp_list[local])
                if tok_list[local] in self._stop:
                    finish[r] = "stop"
                elif len(tokens[r]) < sampling.max_new_tokens:
                    keep.append(local)
            if not keep:
                break
            if len(keep) != len(active):
                keep_t = torch.tensor(keep, dtype=torch.long, device=device)
                select_cache_rows(cache, keep_t)
                mask, next_pos, tok = mask[keep_t], next_pos[keep_t], tok[keep_t]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1

        comps = []
        for r, (i, _) in enumerate(batch):
            body = tokens[r][:-1] if finish[r] == "stop" else tokens[r]
            comps.append(
                Completion(
                    # one sequence of ids decodes to one str (the stubs also allow list[str], for batches)
                    text=cast(str, self.tokenizer.decode(body, skip_special_tokens=False)),
                    token_ids=tokens[r],
                    logprobs=logprobs[r],
                    finish_reason=finish[r],
                    prompt_token_ids=list(prompts[i]),
                )
            )
        return comps
