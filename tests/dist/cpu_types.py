"""Test helper for CPU runs of megatron's DistributedOptimizer (tests/dist workers and tests/unit)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def cuda_type_names():
    """megatron's DistributedOptimizer and its bf16 optimizer refuse parameters whose ``type()``
    does not name a CUDA tensor ('torch.cuda.FloatTensor'), though the rest of them runs on CPU
    tensors over gloo; while they are built, CPU tensors report the CUDA names."""
    original = torch.Tensor.type

    def cuda_name(self, *args, **kwargs):
        name = original(self, *args, **kwargs)
        # under cpu_compat's TorchFunctionMode the call comes back through here: rename once
        if args or kwargs or not isinstance(name, str) or ".cuda." in name:
            return name
        return name.replace("torch.", "torch.cuda.", 1)

    torch.Tensor.type = cuda_name  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.type = original  # type: ignore[method-assign]
