"""Worker for test_checkpoint_reshard.py (``torchrun --nproc_per_node 2``, gloo): a dist checkpoint
saved at TP=2 with sequence parallelism (MoE) or at EP=2 loads at TP=1 / EP=1 (DP=2); with
megatron's DistributedOptimizer (state sharded over DP), one saved at DP=2 loads at DP=2 and one
saved at EP=2 loads at TP=2 + SP.

For each case, in one launch: build the tiny MoE policy at the source layout, take an optimizer
step on batch A, save, record the full weights (``sharding.iter_full_state``), the loss on batch
B, then take a second step on B and record the full weights after it (the reference continuation).
Then tear the layout down, build a policy with *other* initial weights at the target layout, load
the checkpoint, and record the same quantities: equal weights, equal loss, and the same second
step (which needs Adam's moments and step count to have been resharded, not just the weights).
A third policy loads weights only and takes the same step: it must end elsewhere, or the
comparison of the continuation would be vacuous. Every rank trains on the whole batch (DDP
averages identical gradients). Rank 0 saves {case: {...}}.
"""

import contextlib
import sys
import time

import torch
import torch.nn.functional as F
from cpu_types import cuda_type_names  # tests/dist, next to this script

VOCAB = 256
DIST_OPT = dict(use_distributed_optimizer=True)
CASES = [  # (name, source ParallelConfig kwargs, target kwargs)
    ("tp2_sp_moe_to_tp1", dict(tensor_model_parallel_size=2, sequence_parallel=True), dict()),
    ("ep2_to_ep1", dict(expert_model_parallel_size=2), dict()),
    ("distopt_dp2", DIST_OPT, DIST_OPT),
    (
        "distopt_ep2_to_tp2_sp",
        dict(DIST_OPT, expert_model_parallel_size=2),
        dict(DIST_OPT, tensor_model_parallel_size=2, sequence_parallel=True),
    ),
]


def _model_cfg(seed: int):
    from pivotrl_nemo.config.schema import ModelConfig

    return ModelConfig(num_experts=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, head_dim=16,
                       moe_ffn_hidden_size=32, moe_router_topk=2, seed=seed)


def _policy(parallel, seed: int):
    from pivotrl_nemo.config.schema import OptimConfig
    from pivotrl_nemo.distributed.setup import init_distributed
    from pivotrl_nemo.models.megatron.policy import MegatronPolicy

    init_distributed(parallel, seed=0)
    # adam_eps=1 keeps the update ~ linear in the gradient (no amplification of summation-order
    # noise in tiny gradients), while still depending on the loaded moments and step count
    with cuda_type_names() if parallel.use_distributed_optimizer else contextlib.nullcontext():
        return MegatronPolicy(_model_cfg(seed), VOCAB, OptimConfig(lr=1e-2, clip_grad=0.0, adam_eps=1.0,
                                                                   warmup_steps=3), parallel=parallel)


def _batch(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(seed))


def _loss(policy, ids: torch.Tensor) -> torch.Tensor:
    logits = policy.forward_logits(ids)[:, : ids.shape[1]]  # sequence parallelism pads to a multiple of TP
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1).to(logits.device))


def _step(policy, ids: torch.Tensor) -> float:
    policy.zero_grad()
    loss = _loss(policy, ids)
    loss.backward()
    policy.optimizer_step()
    return float(loss.detach())


def _full(policy) -> dict:
    from pivotrl_nemo.models.megatron import sharding

    return {k: v.detach().clone().cpu() for k, v in sharding.iter_full_state(policy)}


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def _case(name: str, src: dict, dst: dict, root: str) -> dict:
    from pivotrl_nemo.config.schema import ParallelConfig
    from pivotrl_nemo.distributed.setup import destroy

    a, b = _batch(1), _batch(2)
    policy = _policy(ParallelConfig(**src), seed=3)
    policy.train()
    _step(policy, a)
    t0 = time.perf_counter()
    saved_dir = policy.save(root, extra={"loop_step": 1, "case": name}, metrics={"train/loss": 1.0})
    save_s = time.perf_counter() - t0
    saved = _full(policy)
    with torch.no_grad():
        loss_b = float(_loss(policy, b))
    _step(policy, b)
    ref_after, ref_lr = _full(policy), policy.current_lr()
    destroy(keep_default_group=True)

    target = ParallelConfig(**dst)
    loaded = _policy(target, seed=99)
    loaded.train()
    before, _ = _max_diff(_full(loaded), saved)  # other initial weights: the load must change them
    t0 = time.perf_counter()
    extra = loaded.load(root)
    load_s = time.perf_counter() - t0
    got = _full(loaded)
    weights_diff, weights_worst = _max_diff(got, saved)
    with torch.no_grad():
        loss_b_loaded = float(_loss(loaded, b))
    step_count = loaded.step_count
    _step(loaded, b)
    after_diff, after_worst = _max_diff(_full(loaded), ref_after)
    lr = loaded.current_lr()

    weights_only = _policy(target, seed=99)
    weights_only.train()
    weights_only.load(root, load_optimizer=False)
    _step(weights_only, b)
    fresh_optimizer_diff, _ = _max_diff(_full(weights_only), ref_after)
    destroy(keep_default_group=True)
    return {"saved_dir": str(saved_dir), "extra": extra, "step_count": step_count, "before": before,
            "weights_diff": weights_diff, "weights_worst": weights_worst, "same_names": sorted(got) == sorted(saved),
            "loss_b": loss_b, "loss_b_loaded": loss_b_loaded, "after_diff": after_diff, "after_worst": after_worst,
            "lr": lr, "ref_lr": ref_lr, "fresh_optimizer_diff": fresh_optimizer_diff, "save_s": save_s,
            "load_s": load_s}


def main(out: str, workdir: str) -> None:
    import torch.distributed as dist

    results = {name: _case(name, src, dst, f"{workdir}/{name}") for name, src, dst in CASES}
    if dist.get_rank() == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
