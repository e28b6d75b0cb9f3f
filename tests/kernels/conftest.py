"""Fixtures for the fused log-prob kernel tests.

The Triton interpreter is chosen when triton is imported, so ``TRITON_INTERPRET=1`` is set here,
before any test module imports the kernels, when there is no GPU. (If something imported triton
earlier in the session without it, the interpreter tests skip and say so.)
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def import_kernels():
    """``pivotrl_nemo.kernels`` (setup.py installs ./kernels under that name)."""
    return importlib.import_module("pivotrl_nemo.kernels")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


@pytest.fixture(scope="session")
def kern():
    return import_kernels()


@pytest.fixture(scope="session")
def interp(kern):
    """The kernels package, when the Triton path runs on CPU tensors (interpreter)."""
    reason = kern.triton_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"Triton interpreter unavailable: {reason}")
    return kern
