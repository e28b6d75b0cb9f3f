"""The Triton kernels of the fused log-prob path (the host side is ``triton_logprobs``).

Imported lazily: ``triton.jit`` builds interpreted kernels when ``TRITON_INTERPRET=1`` was set
before triton was imported (CPU tensors), compiled ones otherwise (CUDA tensors).
"""

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def lse_partials_kernel(
    h_ptr,
    w_ptr,
    t_ptr,
    part_ptr,
    N,
    V,
    H,
    vocab_start,
    inv_temp,
    stride_hn,
    stride_wv,
    num_splits,
    split_size,
    num_row_blocks,
    plane,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_R: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program -> (row block, split): groups of GROUP_R row blocks, split-major within a group.
    pid = tl.program_id(0)
    progs_per_group = GROUP_R * num_splits
    first_rb = (pid // progs_per_group) * GROUP_R
    rows_in_group = tl.minimum(num_row_blocks - first_rb, GROUP_R)
    local = pid % progs_per_group
    rb = first_rb + local % rows_in_group
    split = local // rows_in_group

    rows = rb.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    tgt_local = tl.load(t_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start
    offs_k = tl.arange(0, BLOCK_K)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    a = tl.zeros((BLOCK_N,), tl.float32)
    tgt = tl.zeros((BLOCK_N,), tl.float32)
    v_begin = split.to(tl.int64) * split_size
    v_end = tl.minimum(v_begin + split_size, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < H
            hb = tl.load(
                h_ptr + rows[:, None] * stride_hn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
            )
            wb = tl.load(
                w_ptr + cols[:, None] * stride_wv + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0
            )
            if UPCAST:
                hb = hb.to(tl.float32)
                wb = wb.to(tl.float32)
            acc = tl.dot(hb, tl.trans(wb), acc, input_precision=DOT_PRECISION)
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
        hit = (cols[None, :] == tgt_local[:, None]) & col_ok[None, :]
        tgt += tl.sum(tl.where(hit, z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every chunk has a valid column
        d = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
        e = tl.where(col_ok[None, :], tl.exp(d), 0.0)
        ed = e * d
        scale = tl.exp(m - m_new)  # 0 on the first chunk (m = -inf)
        shift = tl.where(s > 0.0, m - m_new, 0.0)  # avoids -inf * 0 on the first chunk
        a = scale * (a + shift * s) + tl.sum(ed, axis=1)
        s = s * scale + tl.sum(e, axis=1)
        m = m_new

    base = split.to(tl.int64) * N + rows
    tl.store(part_ptr + base, m, mask=row_ok)
    tl.store(part_ptr + plane + base, s, mask=row_ok)
    tl.store(part_ptr + 2 * plane + base, a, mask=row_ok)
    tl.store(part_ptr + 3 * plane + base, tgt, mask=row_ok)


@triton.jit
def dlogits_kernel(
    h_ptr,
    w_ptr,
    t_ptr,
    lse_ptr,
    g_ptr,
    gent_ptr,
    ent_ptr,
    out_ptr,
    N,
    H,
    vocab_start,
    chunk_start,
    chunk_len,
    inv_temp,
    stride_hn,
    stride_wv,
    stride_on,
    num_col_blocks,
    num_row_blocks,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_R: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_LP_GRAD: tl.constexpr,
    HAS_ENT_GRAD: tl.constexpr,
):
    pid = tl.program_id(0)
    progs_per_group = GROUP_R * num_col_blocks
    first_rb = (pid // progs_per_group) * GROUP_R
    rows_in_group = tl.minimum(num_row_blocks - first_rb, GROUP_R)
    local = pid % progs_per_group
    rb = first_rb + local % rows_in_group
    cb = local // rows_in_group

    rows = rb.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    ccols = cb.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)  # column inside the chunk
    col_ok = ccols < chunk_len
    cols = chunk_start + ccols  # row of this rank's weight shard
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < H
        hb = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wb = tl.load(w_ptr + cols[:, None] * stride_wv + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            hb = hb.to(tl.float32)
            wb = wb.to(tl.float32)
        acc = tl.dot(hb, tl.trans(wb), acc, input_precision=DOT_PRECISION)

    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    logp = acc * inv_temp - lse[:, None]
    p = tl.exp(logp)
    grad = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    if HAS_LP_GRAD:
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tgt_local = tl.load(t_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start
        onehot = tl.where(cols[None, :] == tgt_local[:, None], 1.0, 0.0)
        grad += g[:, None] * (onehot - p)
    if HAS_ENT_GRAD:
        ge = tl.load(gent_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        grad -= ge[:, None] * p * (logp + ent[:, None])
    grad = tl.where(row_ok[:, None] & col_ok[None, :], grad * inv_temp, 0.0)
    tl.store(
        out_ptr + rows[:, None] * stride_on + ccols[None, :],
        grad.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


KERNELS_INTERPRETED = isinstance(lse_partials_kernel, InterpretedFunction)
"""True when these kernels run through the CPU interpreter."""
STDLIB_INTERPRETED = isinstance(tl.zeros, InterpretedFunction)
"""triton.language's own jit helpers (tl.zeros, tl.max, tl.sum) follow the mode triton was
imported in; a mismatch means TRITON_INTERPRET changed after triton was imported."""
