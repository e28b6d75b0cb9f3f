"""The built-in stages, one module each; importing this package registers them in order.

The order of the imports below is the default ``pivotrl run`` chain (a stage must be registered
after its upstream stages, which the ``stage`` decorator checks), so isort must leave it alone.
"""

# isort: off
from pivotrl_nemo.pipeline.stages import build  # noqa: F401
from pivotrl_nemo.pipeline.stages import sft  # noqa: F401
from pivotrl_nemo.pipeline.stages import extract  # noqa: F401
from pivotrl_nemo.pipeline.stages import profile  # noqa: F401
from pivotrl_nemo.pipeline.stages import filter  # noqa: F401
from pivotrl_nemo.pipeline.stages import train  # noqa: F401
from pivotrl_nemo.pipeline.stages import evaluate  # noqa: F401
from pivotrl_nemo.pipeline.stages import report  # noqa: F401
# isort: on
