"""The pipeline: stages and commands declared once each, the runner, the run-directory layout.

Importing this package registers every built-in stage (``pipeline.stages``) and command
(``pipeline.commands``, ``pipeline.hf_commands``, ``pipeline.compare``); ``cli`` and tests import it before use.
"""

from pivotrl_nemo.pipeline import commands, compare, hf_commands, stages  # noqa: F401  (registers them)
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.pipeline.runner import Runner, StageOrderError
from pivotrl_nemo.pipeline.stage import COMMANDS, STAGES, Command, Stage, StageContext, StagePartial, command, stage

__all__ = [
    "COMMANDS",
    "STAGES",
    "Command",
    "RunLayout",
    "Runner",
    "Stage",
    "StageContext",
    "StageOrderError",
    "StagePartial",
    "command",
    "stage",
]
