"""The ``torch.cuda`` stand-ins ``distributed.cpu_compat`` installs on a machine without CUDA.

Streams and events that do nothing (a CPU runs everything in order), ``current_device()`` as the
CPU device, and ``Tensor.record_stream`` as a no-op for CPU tensors. Only ``cpu_compat`` installs
them; this module patches nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch


class CpuStream:
    """Stand-in for ``torch.cuda.Stream`` on a CPU-only machine: every operation is immediate."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        self.device = torch.device("cpu")
        self.priority = priority

    def wait_stream(self, stream: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> CpuEvent:
        event = event if event is not None else CpuEvent()
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def __enter__(self) -> CpuStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class CpuEvent:
    """Stand-in for ``torch.cuda.Event``."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self._time = 0.0

    def record(self, stream: Any = None) -> None:
        self._time = time.perf_counter()

    def wait(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def elapsed_time(self, end_event: CpuEvent) -> float:
        return (end_event._time - self._time) * 1000.0


DEFAULT_STREAM = CpuStream()


def cpu_current_device() -> torch.device:
    return torch.device("cpu")


def cpu_stream(stream: Any = None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext(stream)


def cpu_current_stream(device: Any = None) -> CpuStream:
    return DEFAULT_STREAM


def cpu_synchronize(device: Any = None) -> None:
    return None


def make_record_stream(original: Callable) -> Callable:
    def record_stream(self: torch.Tensor, stream: Any) -> None:
        if self.is_cuda:
            return original(self, stream)
        return None

    return record_stream
