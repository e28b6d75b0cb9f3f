"""Mamba-2 in plain torch: the SSD chunked scan and the gated RMSNorm, readable references.

Megatron-core's ``MambaMixer`` calls two ``mamba-ssm`` Triton ops that need CUDA:
``mamba_chunk_scan_combined`` and the gated ``RMSNorm`` of ``layernorm_gated``. These are the
same functions in torch, with the same call signatures for what megatron passes, so that a
hybrid Mamba policy trains on a CPU (``distributed.cpu_compat`` registers them only where the
kernels cannot run; a GPU uses ``mamba-ssm`` itself).

The scan computes, per head ``h`` with scalar decay ``a_t = exp(dt_t * A_h)``::

    state_t = a_t * state_{t-1} + dt_t * x_t B_t^T        # [head_dim, d_state]
    y_t     = state_t C_t + D_h * x_t

in chunks of ``chunk_size`` steps: inside a chunk as a masked (attention-like) product, across
chunks as a short recurrence over chunk-boundary states (the SSD decomposition of Mamba-2).
Everything is computed in float32, and autograd differentiates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _decay_matrix(log_a: torch.Tensor) -> torch.Tensor:
    """``exp(sum_{s<k<=t} log_a_k)`` for t >= s, else 0: the intra-chunk decay, ``[..., L, L]``.

    ``log_a`` is ``[..., L]`` (non-positive). Computed from a cumulative sum of the masked
    differences so that no ``exp`` of a large positive number is ever formed.
    """
    length = log_a.shape[-1]
    pairwise = log_a[..., None, :].expand(*log_a.shape, length)  # [..., t, k] = log_a_k
    strictly_after_s = torch.ones(length, length, dtype=torch.bool, device=log_a.device).tril(-1)
    # cumulative over k of log_a_k for s < k <= t, built column by column: rows t, columns s
    summed = pairwise.transpose(-1, -2).masked_fill(~strictly_after_s, 0.0).cumsum(dim=-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=log_a.device).tril()
    return summed.masked_fill(~causal, float("-inf")).exp()


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    return_varlen_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` in torch.

    Shapes: ``x`` ``[b, l, h, p]``, ``dt`` ``[b, l, h]``, ``A`` ``[h]``, ``B``/``C``
    ``[b, l, g, n]`` (``g`` groups shared by ``h / g`` heads each), ``D`` ``[h]`` or ``[h, p]``,
    ``z`` like ``x`` (output gate ``y * silu(z)``), ``dt_bias`` ``[h]``, ``initial_states``
    ``[b, h, p, n]``. Returns ``y`` like ``x`` (in ``x``'s dtype), and the final state
    ``[b, h, p, n]`` when ``return_final_states``. Packed sequences (``seq_idx``, ``cu_seqlens``)
    are not supported here.
    """
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise NotImplementedError("the torch SSD scan does not support packed sequences (seq_idx / cu_seqlens)")
    out_dtype = x.dtype
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    if heads % groups:
        raise ValueError(f"{heads} heads are not a multiple of {groups} groups")
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    xf = x.float()
    Bh = B.float().repeat_interleave(heads // groups, dim=2)  # [b, l, h, n]
    Ch = C.float().repeat_interleave(heads // groups, dim=2)
    log_a = dt * A.float()  # [b, l, h], <= 0

    pad = (-length) % chunk_size
    if pad:
        # padded steps have dt = 0: no input, no decay, so the final state is unchanged by them
        xf, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bh, Ch))
        dt, log_a = (F.pad(t, (0, 0, 0, pad)) for t in (dt, log_a))
    chunks = (length + pad) // chunk_size

    def chunked(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, chunks, chunk_size, *t.shape[2:])

    xc, Bc, Cc = chunked(xf * dt[..., None]), chunked(Bh), chunked(Ch)  # [b, c, L, h, *]
    log_a_c = chunked(log_a).permute(0, 3, 1, 2)  # [b, h, c, L]
    cum = log_a_c.cumsum(dim=-1)

    # within a chunk: y_t += sum_{s<=t} (C_t . B_s) decay(s -> t) dt_s x_s
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * _decay_matrix(log_a_c)
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xc)

    # each chunk's own contribution to the state at its end
    to_end = (cum[..., -1:] - cum).exp()  # [b, h, c, L]
    chunk_states = torch.einsum("bhcl,bclhn,bclhp->bchpn", to_end, Bc, xc)

    # across chunks: the state entering chunk c, by recurrence over the chunk boundaries
    state = (
        initial_states.float()
        if initial_states is not None
        else x.new_zeros((batch, heads, head_dim, d_state), dtype=torch.float32)
    )
    chunk_decay = cum[..., -1].exp()  # [b, h, c]
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
    starts = torch.stack(entering, dim=1)  # [b, c, h, p, n]

    # the entering state's contribution inside each chunk, decayed to step t
    from_start = cum.exp()  # [b, h, c, L]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, starts, from_start)

    y = y.reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]
    if D is not None:
        skip = D.float() if D.dim() == 2 else D.float()[:, None]
        y = y + x.float() * skip
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(out_dtype)
    return (y, state) if return_final_states else y


class GatedRMSNorm(torch.nn.Module):
    """``mamba_ssm.ops.triton.layernorm_gated.RMSNorm`` in torch: RMSNorm over groups of
    ``group_size`` channels, gated by ``silu(z)`` before the norm (``norm_before_gate=False``, as
    Mamba-2 and Nemotron-H use) or after it."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = group_size or hidden_size
        if hidden_size % self.group_size:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of group_size {self.group_size}")
        self.norm_before_gate = norm_before_gate
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` and ``z`` ``[..., hidden_size]``; returns ``x``'s dtype."""
        out_dtype = x.dtype
        h = x.float()
        gate = F.silu(z.float()) if z is not None else None
        if gate is not None and not self.norm_before_gate:
            h = h * gate
        grouped = h.unflatten(-1, (-1, self.group_size))
        h = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        h = h * self.weight.float()
        if gate is not None and self.norm_before_gate:
            h = h * gate
        return h.to(out_dtype)
