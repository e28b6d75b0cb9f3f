"""algorithm.old_logprobs: pi_old recomputed by the trainer (default) makes the first PPO ratio
exactly 1 whatever the engine reported; 'engine' uses the sampling log-probs as they came."""

import pytest
from by_path import load_module


def _worker():
    return load_module("tests/dist/grpo_dp_worker.py", "grpo_dp_worker")


@pytest.mark.parametrize("source", ["trainer", "engine"])
def test_first_ratio_is_one_only_when_pi_old_is_recomputed(source):
    from pivotrl_nemo.algorithms.grpo_step import grpo_step
    from pivotrl_nemo.config.schema import AlgorithmConfig

    w = _worker()
    policy = w.tiny_policy()
    # the fixture's engine log-probs are random numbers, far from the policy's own
    m = grpo_step(policy, w.fixed_groups(), AlgorithmConfig(micro_batch_size=3, old_logprobs=source), 0, 1.0, "torch")
    assert m["logprob_mismatch"] > 0.5  # the trainer-vs-engine gap is logged either way
    # throughput counts both, named: prompts go through the forward pass, only actions carry loss
    assert m["processed_tokens"] > m["trained_tokens"] > 0
    if source == "trainer":
        assert m["ratio_min"] == pytest.approx(1.0, abs=1e-5) and m["ratio_max"] == pytest.approx(1.0, abs=1e-5)
        assert m["clip_fraction"] == 0.0
    else:
        assert m["ratio_min"] < 0.5 and m["clip_fraction"] > 0.1
