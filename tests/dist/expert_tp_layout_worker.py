"""Worker for test_expert_tp_layout.py (``torchrun --nproc_per_node 2``).

1. ``conf/parallel/tp2_ep2.yaml`` as the config loader gives it (attention TP 2 + SP, experts over
   2 ranks with expert TP 1): the groups ``parallel_state`` was initialised with, and one GRPO
   step against the single-rank step (the comparison of layouts_worker.py).
2. At TP 2 with expert TP left null (= TP), a second ``init_distributed`` that spells out expert
   TP 2 is the same layout; one that asks for expert TP 1 is another layout and must be refused.

Rank 0 saves a dict of the results.
"""

import dataclasses
import sys

import torch


def main(out: str) -> None:
    import torch.distributed as dist
    from layouts_worker import MOE, _full, _policy, _step
    from megatron.core import parallel_state as ps

    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.config.schema import ParallelConfig
    from pivotrl_nemo.distributed.dp import DataParallel, current_dp
    from pivotrl_nemo.distributed.setup import destroy, init_distributed
    from pivotrl_nemo.models.megatron import sharding

    ref = _policy(MOE, ParallelConfig())
    init = _full(ref)
    ref_loss = _step(ref, DataParallel(0, 1))["loss"]  # the whole batch: the single-rank step
    ref_after = _full(ref)
    destroy(keep_default_group=True)

    parallel = load_config(["parallel=tp2_ep2"]).parallel
    policy = _policy(MOE, parallel)
    r: dict = {
        "parallel": dataclasses.asdict(parallel),
        "groups": {
            "tp": ps.get_tensor_model_parallel_world_size(),
            "ep": ps.get_expert_model_parallel_world_size(),
            "expert_tp": ps.get_expert_tensor_parallel_world_size(),
            "expert_dp": ps.get_expert_data_parallel_world_size(),
        },
        "model_expert_tp": policy.gpt.config.expert_tensor_parallel_size,
    }
    sharding.load_full_state(policy, lambda k: init[k])
    r["loss"], r["ref_loss"] = _step(policy, current_dp())["loss"], ref_loss
    after = _full(policy)
    r["same_names"] = sorted(after) == sorted(ref_after)
    diffs = {k: float((after[k] - ref_after[k]).abs().max()) for k in ref_after}
    r["worst"] = max(diffs, key=diffs.get)
    r["max_diff"] = diffs[r["worst"]]
    r["moved"] = max(float((ref_after[k] - init[k]).abs().max()) for k in ref_after)
    destroy(keep_default_group=True)

    tp2 = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    init_distributed(tp2)
    r["tp2_expert_tp"] = ps.get_expert_tensor_parallel_world_size()
    r["spelled_out"] = init_distributed(
        dataclasses.replace(tp2, expert_tensor_parallel_size=2)
    ).parallel.tensor_model_parallel_size
    try:
        init_distributed(dataclasses.replace(tp2, expert_tensor_parallel_size=1))
        r["other_expert_tp"] = "accepted"
    except RuntimeError as e:
        r["other_expert_tp"] = str(e)
    destroy(keep_default_group=True)
    if dist.get_rank() == 0:
        torch.save(r, out)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    main(sys.argv[1])
