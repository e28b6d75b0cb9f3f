"""The built-in stages, one module each; importing this package registers them in order.

The order of the imports below is the default ``pivotrl run`` chain (each stage also declares its
upstream stages, which the runner checks).
"""

from pivotrl_nemo.pipeline.stages import build, sft, extract, profile, filter, train, evaluate, report  # noqa: F401
