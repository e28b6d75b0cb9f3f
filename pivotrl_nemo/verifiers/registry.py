"""Verifier construction: ``build_verifier(name, cfg)`` -> a ``Verifier``.

The names live in one table, ``pivotrl_nemo.registry.VERIFIERS`` (built-ins are imported on first
use, so naming ``bfcl_state`` imports ``bfcl_eval`` only when it is built). Every verifier class
is built the same way, ``Cls(cfg)``.
"""

from __future__ import annotations

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.registry import VERIFIERS
from pivotrl_nemo.verifiers.base import Verifier


def build_verifier(name: str, cfg: VerifierConfig) -> Verifier:
    """The verifier registered as ``name``, configured from ``cfg``. An unknown name raises
    ``registry.RegistryError`` (a KeyError) listing the choices and the closest one."""
    return VERIFIERS.get(name)(cfg)


def get_verifier(cfg: VerifierConfig) -> Verifier:
    """``build_verifier(cfg.name, cfg)``: the verifier the config selects."""
    return build_verifier(cfg.name, cfg)
