"""A stand-in for ``pivotrl <stage>`` used ONLY by the Slurm test while multi-rank training is
being built: it proves the launcher's mechanics (srun, torchrun, rank environment, SIGTERM
forwarding, requeue, resume) with the same contract the real command follows.

    python standin_stage.py show-config [overrides]   -> prints the overrides as YAML
    python standin_stage.py train run_dir=D algorithm.steps=N [standin.step_seconds=S]

``train`` joins a gloo process group from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, trains
a tiny linear model with all-reduced gradients, and rank 0 appends one line per step to
``D/train/metrics.jsonl``. On SIGTERM every rank finishes the current step, the ranks agree
(all-reduce of the flag), rank 0 saves ``D/train/checkpoint/state.pt`` + ``trainer_state.json``
atomically, writes ``D/train/PREEMPTED`` and all ranks exit 143. The other ranks exit while rank 0
is still saving (``standin.save_seconds``): a launcher that kills the survivors of a step when one
rank exits non-zero loses that checkpoint. A new run with the same run_dir resumes after the
saved step. Each rank records its environment in ``D/ranks/``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _overrides(args: list[str]) -> dict[str, str]:
    return dict(a.lstrip("+").split("=", 1) for a in args if "=" in a)


def _atomic_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def train(ov: dict[str, str]) -> int:
    import torch
    import torch.distributed as dist

    requested = {"term": False}
    signal.signal(signal.SIGTERM, lambda s, f: requested.update(term=True))
    run_dir = Path(ov["run_dir"])
    out = run_dir / "train"
    steps = int(ov.get("algorithm.steps", "6"))
    step_seconds = float(ov.get("standin.step_seconds", "0.5"))
    save_seconds = float(ov.get("standin.save_seconds", "6.0"))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        k: os.environ.get(k)
        for k in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "SLURM_JOB_ID",
            "SLURM_RESTART_COUNT",
            "SLURM_PROCID",
        )
    }
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    _atomic_json(run_dir / "ranks" / f"rank{rank}-attempt{attempt}.json", env)

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = out / "checkpoint" / "state.pt"
    start = 1
    if (out / "trainer_state.json").exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start = json.loads((out / "trainer_state.json").read_text())["step"] + 1
    for step in range(start, steps + 1):
        g = torch.Generator().manual_seed(step * 100 + rank)
        x = torch.randn(16, 8, generator=g)
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        time.sleep(step_seconds)
        flag = torch.tensor([1.0 if requested["term"] else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item()) and step < steps
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "train/loss": loss.item(), "world_size": world}) + "\n")
        dist.barrier()
        if stop and rank != 0:  # the other ranks leave first; rank 0 is still saving (a slow save)
            return 143
        if rank == 0 and (stop or step == steps or step % 2 == 0):
            if stop:
                time.sleep(save_seconds)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
            _atomic_json(out / "trainer_state.json", {"step": step})
        if stop:
            (out / "PREEMPTED").write_text(f"{step}\n")
            return 143
    dist.barrier()
    if rank == 0:
        (out / "PREEMPTED").unlink(missing_ok=True)
    dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    stage, ov = argv[0], _overrides(argv[1:])
    if stage == "show-config":
        sys.stdout.write("".join(f"{k}: {v}\n" for k, v in sorted(ov.items())))
        return 0
    if stage in ("train", "run"):
        return train(ov)
    sys.stderr.write(f"standin_stage: unknown stage {stage!r}\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
