"""One GRPO training step on the real megatron policy gives the same loss and the same updated
weights with loss.impl=torch and loss.impl=triton (the kernel under TRITON_INTERPRET=1 on CPU)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "grpo_dp_worker", Path(__file__).parents[1] / "dist" / "grpo_dp_worker.py"
)
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)

needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton path needs CUDA or TRITON_INTERPRET=1 set before triton is imported",
)


@needs_triton
@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_torch_and_triton_training_steps_agree(kl_coef):
    m_t, w_t = worker.step_and_weights("torch", kl_coef)
    m_k, w_k = worker.step_and_weights("triton", kl_coef)
    assert m_t["loss"] == pytest.approx(m_k["loss"], rel=1e-5, abs=1e-7)
    assert m_t["entropy"] == pytest.approx(m_k["entropy"], rel=1e-5)
    assert m_t["kl"] == pytest.approx(m_k["kl"], rel=1e-4, abs=1e-8)
    assert (m_t["kl"] > 0) == (kl_coef > 0)
    for k, w in w_t.items():
        assert torch.allclose(w, w_k[k], atol=1e-5), k
