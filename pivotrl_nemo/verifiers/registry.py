"""Verifier selection: ``get_verifier(cfg.verifier)`` -> a ``Verifier``."""

from __future__ import annotations

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.verifiers.base import Verifier

VERIFIER_NAMES = ("bfcl_state", "tool_call_args", "strict")


def get_verifier(cfg: VerifierConfig) -> Verifier:
    """The verifier ``cfg.name`` selects, configured from ``cfg``. Unknown names raise ValueError."""
    if cfg.name == "bfcl_state":
        from pivotrl_nemo.domains.bfcl.verifier import BfclStateVerifier  # imports bfcl_eval lazily

        return BfclStateVerifier()
    if cfg.name == "tool_call_args":
        from pivotrl_nemo.verifiers.tool_call_args import ToolCallArgsVerifier

        return ToolCallArgsVerifier(
            word_overlap_threshold=cfg.word_overlap_threshold,
            float_tolerance=cfg.float_tolerance,
            parallel_mode=cfg.parallel_mode,
        )
    if cfg.name == "strict":
        from pivotrl_nemo.verifiers.strict import StrictVerifier

        return StrictVerifier()
    raise ValueError(f"unknown verifier {cfg.name!r}; choices: {list(VERIFIER_NAMES)}")
