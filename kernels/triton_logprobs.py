"""Fused lm-head + log-softmax-gather in Triton: per-token target log-probs and entropies from
the hidden states and the (vocab-parallel) lm-head weight, never materialising ``[N, V]`` logits.

Forward (``_triton_kernels.lse_partials_kernel``). A 1-D grid over (row block, vocab split) tiles. A program
keeps ``BLOCK_N`` hidden rows and walks its split of the vocabulary in ``BLOCK_V`` chunks; for
each chunk it computes ``h @ W_chunk^T`` with ``tl.dot`` (fp32 accumulation) and updates, in
fp32, an online log-sum-exp: running max ``m``, ``s = sum exp(z - m)``, ``a = sum exp(z - m) (z - m)``
(for the entropy) and the target logit. Only one ``[BLOCK_N, BLOCK_V]`` tile of logits is ever
alive. The per-split partials (4 floats per row and split) are merged in torch, first over
splits, then over TP ranks with one MAX and one SUM all-reduce.

Why vocab splits: with only ``N / BLOCK_N`` programs a 4K-token batch would fill half an H100;
splits add parallelism, and the grouped program order (``GROUP_R`` row blocks x all splits run
side by side) lets the hidden block and the weight chunk be reused from L2.

Backward (``_triton_kernels.dlogits_kernel`` + two GEMMs per vocab chunk). For a chunk of ``Vc`` vocab rows the
kernel recomputes the logits tile by tile and writes ``dL/dlogits = (g (onehot - p)
- g_H p (log p + H)) / T`` into an ``[N, Vc]`` buffer; then ``grad_h += dlogits @ W_c`` and
``grad_W[c] = dlogits^T @ h`` run as cuBLAS GEMMs (``grad_h`` summed over chunks in fp32). Chosen over atomics because (1) it is
deterministic (no fp32 atomic order), (2) the two GEMMs run at library speed instead of an
epilogue-bound Triton tile, and (3) each ``grad_W`` row is written once, by one GEMM with fp32
accumulation inside; memory stays bounded by the chunk (``bwd_chunk_elems``, default 2^27
elements = 256 MiB in bf16), the same order as the hidden states.

Safety: 1-D grids (no 65,535 limit on the row axis), int64 offsets, fp32 accumulators for every
reduction (vocabularies beyond 250K), log-probs clamped to ``<= 0``. Inputs are loaded in their
dtype; on the GPU bf16 tiles go to ``tl.dot`` directly (bf16 products are exact, accumulation is
fp32); under the CPU interpreter, which mishandles bf16 arithmetic, they are upcast at load.
fp32 inputs use ``input_precision="ieee"`` (no TF32).

The kernels (``_triton_kernels``) are imported on first use. With ``TRITON_INTERPRET=1`` set
before triton is imported they run through the interpreter on CPU tensors (slow: tests only);
otherwise they are compiled for CUDA tensors. Any other combination raises a clear error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .parallel import all_reduce_max_, all_reduce_sum_, vocab_start


@dataclass(frozen=True)
class KernelConfig:
    block_n: int = 128
    """Hidden rows per program."""
    block_v: int = 128
    """Vocabulary columns per logits tile."""
    block_k: int = 64
    """Hidden-dimension step of the tile GEMM."""
    group_r: int = 8
    """Row blocks scheduled side by side (L2 reuse of the weight chunk)."""
    num_splits: int | None = None
    """Vocabulary splits of the forward grid; None: min(16, vocab tiles)."""
    bwd_chunk_elems: int = 1 << 27
    """Size bound of the backward's dlogits buffer (rows x vocab chunk)."""
    num_warps: int = 8
    num_stages: int = 3


GPU_CONFIG = KernelConfig()
"""Untuned defaults for Hopper-class GPUs (128x128x64 tiles, 8 warps, 3 stages)."""
INTERPRETER_CONFIG = KernelConfig(
    block_n=16, block_v=32, block_k=32, group_r=2, num_splits=2, bwd_chunk_elems=1 << 12, num_warps=4, num_stages=1
)
"""Small tiles for the CPU interpreter (several splits and backward chunks even at toy sizes)."""


@functools.lru_cache(maxsize=1)
def _kernels():
    """(module, None) or (None, reason): the kernels import triton, which is optional."""
    try:
        from . import _triton_kernels  # lazy: triton is optional, and TRITON_INTERPRET is read at its import
    except ImportError as exc:
        return None, f"triton is not importable ({exc}); use impl='torch'"
    return _triton_kernels, None


def availability(device: torch.device) -> str | None:
    """None when the Triton path can run on tensors of ``device``, else the reason it cannot."""
    mod, reason = _kernels()
    if mod is None:
        return reason
    if mod.KERNELS_INTERPRETED != mod.STDLIB_INTERPRETED:
        return (
            "TRITON_INTERPRET changed after triton was imported (triton.language and these kernels "
            "disagree on interpreter mode); set it before anything imports triton, e.g. megatron.core"
        )
    if device.type == "cpu":
        if mod.KERNELS_INTERPRETED:
            return None
        return (
            "impl='triton' got CPU tensors: the Triton kernels run on CPU only through the interpreter "
            "(TRITON_INTERPRET=1 set before triton is imported; slow, for tests). Use impl='torch' on CPU."
        )
    if device.type == "cuda":
        if not mod.KERNELS_INTERPRETED:
            return None
        return (
            "impl='triton' got CUDA tensors but TRITON_INTERPRET=1 is set (interpreter mode runs CPU "
            "tensors only); unset it to use the compiled kernels"
        )
    return f"the Triton kernels support CUDA tensors (or CPU ones through the interpreter), not {device.type}"


# ----- host side -----------------------------------------------------------------------------


def _config_for(device: torch.device, config: KernelConfig | None) -> KernelConfig:
    if config is not None:
        return config
    return INTERPRETER_CONFIG if device.type == "cpu" else GPU_CONFIG


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dot_args(device: torch.device, dtype: torch.dtype) -> dict:
    upcast = device.type == "cpu" or dtype not in (torch.bfloat16, torch.float16)
    return {"UPCAST": upcast, "DOT_PRECISION": "ieee" if upcast else "tf32"}


def _launch(name: str, grid: int, cfg: KernelConfig, *args, **meta):
    kernel = getattr(_kernels()[0], name)
    kernel[(grid,)](*args, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta)


def _check_inputs(hidden, weight, targets):
    reason = availability(hidden.device)
    if reason is not None:
        raise RuntimeError(reason)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [N, H] and weight [V/TP, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N]={hidden.shape[0]}, got {tuple(targets.shape)}")
    if weight.device != hidden.device or targets.device != hidden.device:
        raise ValueError("hidden, weight and targets must be on one device")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")


def lse_partials(hidden, weight, targets, temperature, vocab_offset, config=None):
    """Launch the forward kernel: fp32 partials [4, splits, N] = (max, sum-exp, a, target)."""
    cfg = _config_for(hidden.device, config)
    n, h = hidden.shape
    v = weight.shape[0]
    v_tiles = _cdiv(v, cfg.block_v)
    splits = min(cfg.num_splits or 16, v_tiles)
    split_size = _cdiv(v_tiles, splits) * cfg.block_v
    splits = _cdiv(v, split_size)  # every split owns >= 1 valid column
    part = torch.empty((4, splits, n), dtype=torch.float32, device=hidden.device)
    row_blocks = _cdiv(n, cfg.block_n)
    _launch(
        "lse_partials_kernel",
        row_blocks * splits,
        cfg,
        hidden,
        weight,
        targets,
        part,
        n,
        v,
        h,
        vocab_offset,
        1.0 / temperature,
        hidden.stride(0),
        weight.stride(0),
        splits,
        split_size,
        row_blocks,
        splits * n,
        BLOCK_N=cfg.block_n,
        BLOCK_V=cfg.block_v,
        BLOCK_K=cfg.block_k,
        GROUP_R=cfg.group_r,
        **_dot_args(hidden.device, hidden.dtype),
    )
    return part


def combine_partials(part: torch.Tensor, tp_group=None):
    """Merge per-split partials, then per-TP-rank ones: (lse, logprobs, entropy), fp32 [N].

    For partials (m_i, s_i, a_i) with M = max_i m_i and w_i = exp(m_i - M):
    S = sum w_i s_i, A = sum w_i (a_i + (m_i - M) s_i), lse = M + log S, entropy = log S - A / S.
    """
    m, s, a, tgt = part.unbind(0)
    row_max = all_reduce_max_(m.max(dim=0).values, tp_group)
    w = torch.exp(m - row_max)
    sums = torch.stack([(w * s).sum(0), (w * (a + (m - row_max) * s)).sum(0), tgt.sum(0)])
    all_reduce_sum_(sums, tp_group)
    sum_exp, sum_ed, target = sums.unbind(0)
    log_sum = torch.log(sum_exp)
    lse = row_max + log_sum
    logprobs = torch.clamp(target - lse, max=0.0)
    entropy = torch.clamp(log_sum - sum_ed / sum_exp, min=0.0)
    return lse, logprobs, entropy


def forward_logprobs(hidden, weight, targets, temperature=1.0, tp_group=None, config=None):
    """No-autograd forward: (lse, logprobs, entropy), fp32 [N]."""
    _check_inputs(hidden, weight, targets)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros((0,), dtype=torch.float32)
        return empty, empty.clone(), empty.clone()
    offset = vocab_start(weight.shape[0], tp_group)
    part = lse_partials(hidden, weight, targets, temperature, offset, config)
    return combine_partials(part, tp_group)


def backward_grads(
    hidden,
    weight,
    targets,
    lse,
    entropy,
    grad_logprobs,
    grad_entropy,
    temperature,
    tp_group=None,
    config=None,
    need_hidden=True,
    need_weight=True,
):
    """(grad_hidden, grad_weight) given dL/dlogprob and dL/dentropy per token (either may be None)."""
    cfg = _config_for(hidden.device, config)
    n, h = hidden.shape
    v = weight.shape[0]
    grad_h = torch.zeros((n, h), dtype=torch.float32, device=hidden.device) if need_hidden else None
    grad_w = torch.empty_like(weight) if need_weight else None
    if n > 0 and (grad_logprobs is not None or grad_entropy is not None):
        chunk = max(cfg.block_v, (cfg.bwd_chunk_elems // max(n, 1)) // cfg.block_v * cfg.block_v)
        chunk = min(chunk, _cdiv(v, cfg.block_v) * cfg.block_v)
        buf = torch.empty((n, chunk), dtype=weight.dtype, device=hidden.device)
        row_blocks = _cdiv(n, cfg.block_n)
        dummy = lse  # placeholder pointer for the absent gradient inputs
        g = grad_logprobs.contiguous() if grad_logprobs is not None else dummy
        ge = grad_entropy.contiguous() if grad_entropy is not None else dummy
        offset = vocab_start(v, tp_group)
        for c0 in range(0, v, chunk):
            cl = min(chunk, v - c0)
            col_blocks = _cdiv(cl, cfg.block_v)
            _launch(
                "dlogits_kernel",
                row_blocks * col_blocks,
                cfg,
                hidden,
                weight,
                targets,
                lse,
                g,
                ge,
                entropy,
                buf,
                n,
                h,
                offset,
                c0,
                cl,
                1.0 / temperature,
                hidden.stride(0),
                weight.stride(0),
                buf.stride(0),
                col_blocks,
                row_blocks,
                BLOCK_N=cfg.block_n,
                BLOCK_V=cfg.block_v,
                BLOCK_K=cfg.block_k,
                GROUP_R=cfg.group_r,
                HAS_LP_GRAD=grad_logprobs is not None,
                HAS_ENT_GRAD=grad_entropy is not None,
                **_dot_args(hidden.device, hidden.dtype),
            )
            dl = buf[:, :cl]
            if grad_h is not None:
                if dl.dtype == torch.float32:
                    grad_h.addmm_(dl, weight[c0 : c0 + cl])
                else:  # bf16 GEMM (fp32 accumulation inside), summed over chunks in fp32
                    grad_h += dl @ weight[c0 : c0 + cl]
            if grad_w is not None:
                torch.mm(dl.t(), hidden, out=grad_w[c0 : c0 + cl])
        del buf, dl
    elif grad_w is not None:
        grad_w.zero_()
    if grad_h is not None:
        all_reduce_sum_(grad_h, tp_group)  # each shard's contribution; every rank gets the sum
        grad_h = grad_h.to(hidden.dtype)
    return grad_h, grad_w


class FusedLogprobs(torch.autograd.Function):
    """(logprobs, entropy) = f(hidden, weight); differentiable wrt hidden and weight.

    The log-prob clamp at 0 only catches rounding: its gradient is passed through.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, tp_group, config):
        ctx.set_materialize_grads(False)
        hidden_c, weight_c, targets_c = hidden.contiguous(), weight.contiguous(), targets.contiguous()
        lse, logprobs, entropy = forward_logprobs(hidden_c, weight_c, targets_c, temperature, tp_group, config)
        ctx.save_for_backward(hidden_c, weight_c, targets_c, lse, entropy)
        ctx.temperature, ctx.tp_group, ctx.config = temperature, tp_group, config
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        grad_h, grad_w = backward_grads(
            hidden,
            weight,
            targets,
            lse,
            entropy,
            None if grad_logprobs is None else grad_logprobs.float(),
            None if grad_entropy is None else grad_entropy.float(),
            ctx.temperature,
            ctx.tp_group,
            ctx.config,
            need_hidden=ctx.needs_input_grad[0],
            need_weight=ctx.needs_input_grad[1],
        )
        return grad_h, grad_w, None, None, None, None


def fused_logprobs(hidden, weight, targets, temperature=1.0, tp_group=None, config=None):
    """Autograd entry: (logprobs, entropy), fp32 [N]."""
    return FusedLogprobs.apply(hidden, weight, targets, float(temperature), tp_group, config)
