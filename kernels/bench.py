"""Benchmark the fused log-prob kernel against its peers: forward+backward time and peak memory.

    python -m pivotrl_nemo.kernels.bench --out bench/kernels            # a CUDA GPU
    python -m pivotrl_nemo.kernels.bench --smoke --out /tmp/kbench      # CPU code-path check

Methods, side by side in one run (all compute the mean token NLL of hidden @ W^T, bf16):
``pivotrl_triton`` (this kernel), ``torch_eager`` (logits + fp32 log_softmax + gather),
``torch_compile`` (the same function under ``torch.compile``), ``torch_linear_ce_chunked``
(torch's own chunked ``F.linear_cross_entropy``), ``liger_flce`` (liger-kernel's fused linear
cross-entropy), ``cut_cross_entropy`` (Apple's CCE) and ``lm_head_gemm_floor`` (the bare
``hidden @ W^T`` forward and its two backward GEMMs, the lower bound). A peer that is not
installed is skipped with a note. Writes ``kernel_bench.csv`` and ``kernel_bench.md`` (with the
device name) under ``--out``. Without CUDA it refuses, except ``--smoke``, which runs tiny
shapes through the Triton interpreter so that this code path is exercised by a test.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import torch

from . import fused_logprobs_no_grad, fused_token_logprobs, triton_unavailable_reason

DEFAULT_TOKENS = (4096, 16384, 32768)
DEFAULT_HIDDEN = 4096
DEFAULT_VOCAB = 151_936


class BenchShape(TypedDict):
    """The problem sizes of a run: token counts (one row each), hidden size, vocabulary size."""

    tokens: tuple[int, ...]
    hidden: int
    vocab: int


SMOKE_SHAPE: BenchShape = {"tokens": (8, 24), "hidden": 32, "vocab": 96}


class Skip(Exception):
    """A method that cannot run here (not installed, CUDA only, ...)."""


@dataclass
class Method:
    name: str
    fwd: Callable  # (h, w, t) -> tensor, run under torch.no_grad
    fwd_bwd: Callable  # (h, w, t) -> None, runs backward
    note: str = ""


@dataclass
class Result:
    method: str
    tokens: int
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_gib: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def _nll_eager(h, w, t):
    logits = h @ w.t()
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
    return -logprobs.mean()


def build_methods(device: torch.device, smoke: bool) -> tuple[list[Method], list[tuple[str, str]]]:
    """The methods that can run here, and (name, note) for those that cannot."""
    methods: list[Method] = []
    skipped: list[tuple[str, str]] = []

    def ours_fwd_bwd(h, w, t):
        logprobs, _ = fused_token_logprobs(h, w, t)
        (-logprobs.mean()).backward()

    methods.append(Method("pivotrl_triton", lambda h, w, t: fused_logprobs_no_grad(h, w, t)[0], ours_fwd_bwd))
    methods.append(Method("torch_eager", _nll_eager, lambda h, w, t: _nll_eager(h, w, t).backward()))

    def add(name: str, factory: Callable[[], Method]):
        try:
            methods.append(factory())
        except Skip as exc:
            skipped.append((name, str(exc)))

    def compiled():
        if device.type != "cuda":
            raise Skip("not run on the CPU smoke path (needs a C++ toolchain and minutes of compile)")
        fn = torch.compile(_nll_eager, dynamic=False)
        return Method("torch_compile", fn, lambda h, w, t: fn(h, w, t).backward())

    def torch_chunked():
        options_cls = getattr(torch.nn, "LinearCrossEntropyOptions", None)
        if options_cls is None or not hasattr(torch.nn.functional, "linear_cross_entropy"):
            raise Skip(f"torch {torch.__version__} has no chunked F.linear_cross_entropy")
        opts = options_cls()

        def loss(h, w, t):
            return torch.nn.functional.linear_cross_entropy(h, w, t, options=opts)

        return Method("torch_linear_ce_chunked", loss, lambda h, w, t: loss(h, w, t).backward())

    def liger():
        if device.type != "cuda":
            raise Skip("CUDA only")
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # optional (extra gpu)
        except ImportError as exc:
            raise Skip(f"liger-kernel not installed ({exc})") from None
        fn = LigerFusedLinearCrossEntropyLoss()
        return Method("liger_flce", lambda h, w, t: fn(w, h, t), lambda h, w, t: fn(w, h, t).backward())

    def cce():
        if device.type != "cuda":
            raise Skip("CUDA only")
        try:
            from cut_cross_entropy import linear_cross_entropy  # optional (extra gpu)
        except ImportError as exc:
            raise Skip(f"cut-cross-entropy not installed ({exc})") from None
        return Method(
            "cut_cross_entropy",
            lambda h, w, t: linear_cross_entropy(h, w, t),
            lambda h, w, t: linear_cross_entropy(h, w, t).backward(),
        )

    add("torch_compile", compiled)
    add("torch_linear_ce_chunked", torch_chunked)
    add("liger_flce", liger)
    add("cut_cross_entropy", cce)

    grad_out: dict[tuple, torch.Tensor] = {}

    def floor_fwd_bwd(h, w, t):
        logits = h @ w.t()
        key = tuple(logits.shape)
        if key not in grad_out:  # one fixed upstream gradient, allocated outside the timed runs
            grad_out.clear()
            grad_out[key] = torch.randn_like(logits)
        logits.backward(grad_out[key])

    methods.append(
        Method(
            "lm_head_gemm_floor",
            lambda h, w, t: h @ w.t(),
            floor_fwd_bwd,
            "bare lm-head GEMMs (1 forward, 2 backward): the floor",
        )
    )
    return methods, skipped


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], None], device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _inputs(tokens: int, hidden: int, vocab: int, dtype, device, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(tokens, hidden, generator=gen) / hidden**0.25).to(device=device, dtype=dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.25).to(device=device, dtype=dtype)
    t = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    return h.requires_grad_(), w.requires_grad_(), t


def run_one(method: Method, tokens: int, hidden: int, vocab: int, dtype, device, warmup: int, iters: int) -> Result:
    res = Result(method.name, tokens, note=method.note)
    try:
        h, w, t = _inputs(tokens, hidden, vocab, dtype, device)

        def fwd():
            with torch.no_grad():
                method.fwd(h, w, t)

        def fwd_bwd():
            h.grad = w.grad = None
            method.fwd_bwd(h, w, t)

        res.fwd_ms = _time_ms(fwd, device, warmup, iters)
        res.fwd_bwd_ms = _time_ms(fwd_bwd, device, warmup, iters)
        if device.type == "cuda":
            h.grad = w.grad = None
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fwd_bwd()
            torch.cuda.synchronize(device)
            res.peak_gib = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    except torch.cuda.OutOfMemoryError:
        res.note = (res.note + "; " if res.note else "") + "OOM"
    except Exception as exc:  # a peer failing must not lose the other rows
        res.note = (res.note + "; " if res.note else "") + f"failed: {type(exc).__name__}: {exc}"[:300]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_outputs(out: Path, results: list[Result], skipped, meta: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "kernel_bench.csv", out / "kernel_bench.md"
    fields = [
        "device",
        "method",
        "tokens",
        "hidden",
        "vocab",
        "dtype",
        "fwd_ms",
        "fwd_bwd_ms",
        "peak_gib",
        "x_floor",
        "note",
    ]
    floor = {r.tokens: r.fwd_bwd_ms for r in results if r.method == "lm_head_gemm_floor"}
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            floor_ms = floor.get(r.tokens)
            x_floor = r.fwd_bwd_ms / floor_ms if r.fwd_bwd_ms and floor_ms else None
            writer.writerow(
                {
                    "device": meta["device"],
                    "method": r.method,
                    "tokens": r.tokens,
                    "hidden": meta["hidden"],
                    "vocab": meta["vocab"],
                    "dtype": meta["dtype"],
                    "fwd_ms": _fmt(r.fwd_ms, 3),
                    "fwd_bwd_ms": _fmt(r.fwd_bwd_ms, 3),
                    "peak_gib": _fmt(r.peak_gib, 3),
                    "x_floor": _fmt(x_floor),
                    "note": r.note,
                }
            )
        for name, note in skipped:
            writer.writerow({"device": meta["device"], "method": name, "note": f"skipped: {note}"})
    lines = [
        f"# Fused log-prob kernel benchmark ({meta['mode']})",
        "",
        f"- device: {meta['device']}",
        f"- torch {meta['torch']}, triton {meta['triton']}",
        f"- H = {meta['hidden']}, V = {meta['vocab']}, {meta['dtype']}; loss = mean token NLL; "
        f"median of {meta['iters']} runs after {meta['warmup']} warm-up",
        f"- date: {meta['date']}",
        "",
        "Forward+backward ms / peak extra GiB (memory allocated during one forward+backward above what "
        "was allocated before it: inputs and weight; x floor = time over the bare GEMMs')",
        "",
    ]
    methods = list(dict.fromkeys(r.method for r in results))
    lines.append("| method | " + " | ".join(f"N={n}" for n in meta["tokens"]) + " |")
    lines.append("|---|" + "---|" * len(meta["tokens"]))
    by_key = {(r.method, r.tokens): r for r in results}
    for m in methods:
        cells = []
        for n in meta["tokens"]:
            row = by_key.get((m, n))
            if row is None or row.fwd_bwd_ms is None:
                cells.append(row.note if row is not None and row.note else "-")
                continue
            floor_ms = floor.get(n)
            x = f" (x{row.fwd_bwd_ms / floor_ms:.2f})" if floor_ms else ""
            cells.append(f"{row.fwd_bwd_ms:.2f} ms / {_fmt(row.peak_gib)} GiB{x}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Forward only (no grad), ms:",
        "",
        "| method | " + " | ".join(f"N={n}" for n in meta["tokens"]) + " |",
        "|---|" + "---|" * len(meta["tokens"]),
    ]
    for m in methods:
        lines.append(
            f"| {m} | " + " | ".join(_fmt(getattr(by_key.get((m, n)), "fwd_ms", None)) for n in meta["tokens"]) + " |"
        )
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {name}: {note}" for name, note in skipped]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/kernels"))
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN)
    parser.add_argument("--vocab", type=int, default=DEFAULT_VOCAB)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on CPU through the Triton interpreter (code-path check only)"
    )
    args = parser.parse_args(argv)

    if args.smoke:
        if "triton" not in sys.modules:
            os.environ.setdefault("TRITON_INTERPRET", "1")
        device, dtype = torch.device("cpu"), torch.bfloat16
        args.tokens, args.hidden, args.vocab = list(SMOKE_SHAPE["tokens"]), SMOKE_SHAPE["hidden"], SMOKE_SHAPE["vocab"]
        args.warmup, args.iters = 1, 1
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise SystemExit(f"bench --smoke cannot run the Triton path: {reason}")
        device_name = "cpu (Triton interpreter; timings meaningless)"
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "kernels/bench.py measures GPU kernels and needs CUDA, which this machine lacks; "
                "--smoke runs tiny shapes through the Triton interpreter to check the code path"
            )
        device, dtype = torch.device("cuda"), torch.bfloat16
        device_name = torch.cuda.get_device_name(device)

    methods, skipped = build_methods(device, args.smoke)
    if args.methods:
        methods = [m for m in methods if m.name in args.methods or m.name == "lm_head_gemm_floor"]
    try:
        import triton  # optional; imported after TRITON_INTERPRET is chosen above

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    results = []
    for tokens in args.tokens:
        for method in methods:
            results.append(run_one(method, tokens, args.hidden, args.vocab, dtype, device, args.warmup, args.iters))
    meta = {
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton_version,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "dtype": str(dtype).replace("torch.", ""),
        "tokens": args.tokens,
        "iters": args.iters,
        "warmup": args.warmup,
        "mode": "smoke" if args.smoke else "GPU",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    csv_path, md_path = write_outputs(args.out, results, skipped, meta)
    sys.stdout.write(md_path.read_text())
    sys.stdout.write(f"\nwrote {csv_path} and {md_path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
