"""Tokens/s and peak memory of one policy training step (forward, head, backward, optimizer).

    python bench/train_step.py --seq 600 --batch 16 --vocab 4096
    python bench/train_step.py --seq 600 --batch 16 --vocab 49152 --attention local

    torchrun --nproc_per_node 2 bench/train_step.py --seq 600 --batch 16 parallel=tp2

Runs the real megatron-core policy on whatever device torch picks up (CPU here) through the
training path (megatron's forward-backward schedule, the vocab-parallel head, finalize grads,
optimizer), at any layout: launched with torchrun, ``parallel=...`` picks TP/PP/EP and the batch
is split over the data-parallel ranks. Rank 0 prints one line per measured step plus the median
(tokens/s over all ranks; peak memory of rank 0). Reports the machine it ran on.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time

import torch

from pivotrl_nemo.algorithms.head import action_logprobs
from pivotrl_nemo.config import load_config
from pivotrl_nemo.distributed import env
from pivotrl_nemo.distributed.dp import current_dp
from pivotrl_nemo.models.megatron.batching import chunks, make_batch
from pivotrl_nemo.pipeline.runtime import Runtime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=600, help="prompt tokens per sequence")
    ap.add_argument("--action", type=int, default=44, help="action (loss) tokens per sequence")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--attention", choices=["sdpa", "local"], default="sdpa")
    ap.add_argument("--impl", choices=["torch", "triton"], default="torch")
    ap.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up)")
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the model, e.g. model.hidden_size=256")
    args = ap.parse_args(argv)

    cfg = load_config(["experiment=quickstart", f"model.attention_backend={args.attention}", *args.overrides])
    rt = Runtime(cfg)
    rt.__dict__["vocab_size"] = args.vocab  # no tokenizer needed: random token ids
    policy = rt.new_policy(cfg.sft.optim, 100)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, args.vocab, (args.seq,), generator=g).tolist() for _ in range(args.batch)]
    actions = [torch.randint(0, args.vocab, (args.action,), generator=g).tolist() for _ in range(args.batch)]
    dp = current_dp()
    mine = dp.shard(list(range(args.batch)))
    batches = [
        make_batch([prompts[mine[i]] for i in mb], [actions[mine[i]] for i in mb], 0)
        for mb in chunks(len(mine), args.micro_batch)
    ]
    total = args.batch * args.action

    def loss_fn(i, b, hidden, weight):
        lp, _ = action_logprobs(hidden, weight, b.targets.to(hidden.device), 1.0, args.impl, policy.tp_group)
        return -lp.sum() / total * dp.size, {}

    main_rank = env.is_main()
    times = []
    for it in range(args.steps + 1):
        dp.barrier()
        t0 = time.perf_counter()
        policy.zero_grad()
        policy.forward_backward(batches, loss_fn)
        policy.optimizer_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if it > 0:
            times.append(dt)
            if main_rank:
                sys.stdout.write(f"step {it}: {dt:.3f} s\n")
    med = statistics.median(times)
    tokens = args.batch * (args.seq + args.action)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    p = policy.parallel
    layout = (
        f"TP{p.tensor_model_parallel_size} PP{p.pipeline_model_parallel_size} EP{p.expert_model_parallel_size}"
        f"{' SP' if p.sequence_parallel else ''} DP{dp.size}"
    )
    if not main_rank:
        return 0
    sys.stdout.write(
        f"{device} | {layout} | seq {args.seq} batch {args.batch} vocab {args.vocab} "
        f"attention {args.attention} impl {args.impl} | median {med:.3f} s/step, {tokens / med:,.0f} tokens/s, peak {peak:.2f} GiB "
        f"({'GPU allocated' if torch.cuda.is_available() else 'process max RSS'})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
