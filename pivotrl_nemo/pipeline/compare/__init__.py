"""``pivotrl compare``: PivotRL against SFT, end-to-end RL and its ablations on the same data.

``arms`` (the ``ARMS`` registry: one function per arm), ``evaluation`` (the same held-out
measures for every policy), ``command`` (orchestration, caching, resume), ``table`` and
``plots`` (``comparison.json`` / ``.md`` / ``plots/compare_*.png``).
"""

from pivotrl_nemo.pipeline.compare import command  # noqa: F401  (registers the command)
from pivotrl_nemo.pipeline.compare.arms import ARMS, ArmContext

__all__ = ["ARMS", "ArmContext"]
