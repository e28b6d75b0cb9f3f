"""The CLI commands that are not stages and not Hugging Face conversions: ``validate`` and
``show-config``."""

from __future__ import annotations

import sys

from pivotrl_nemo.config import ConfigError, load_config, to_yaml
from pivotrl_nemo.data.pivots import validate_file
from pivotrl_nemo.pipeline.stage import command


@command(
    "validate",
    usage="pivotrl validate FILE [FILE ...]",
    help="check pivot-row files: file:line: field: message for every problem",
)
def validate_main(args: list[str]) -> int:
    """Validate pivot-row files; exit 1 when any row is invalid."""
    if not args:
        sys.stderr.write("usage: pivotrl validate FILE [FILE ...]\n")
        return 2
    bad = 0
    for path in args:
        rep = validate_file(path)
        for p in rep.problems:
            sys.stdout.write(p + "\n")
        sys.stdout.write(f"{path}: {rep.rows} rows, {rep.invalid} invalid; {rep.summary()}\n")
        bad += rep.invalid
    return 1 if bad else 0


@command("show-config", usage="pivotrl show-config [overrides]", help="print the resolved configuration")
def show_config_main(args: list[str]) -> int:
    """Print the resolved configuration as YAML."""
    try:
        cfg = load_config(args)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write(to_yaml(cfg))
    return 0
