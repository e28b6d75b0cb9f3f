"""The CLI commands that are not stages and not Hugging Face conversions: ``validate`` and
``show-config``."""

from __future__ import annotations

import sys

from pivotrl_nemo.config import ConfigError, to_yaml
from pivotrl_nemo.data.pivots import validate_file
from pivotrl_nemo.pipeline.run_config import load_run_config
from pivotrl_nemo.pipeline.stage import command


@command(
    "validate",
    usage="pivotrl validate FILE [FILE ...]",
    help="check pivot-row or trajectory files: file:line: field: message for every problem",
)
def validate_main(args: list[str]) -> int:
    """Validate pivot-row or trajectory files (the format is read off each file's first parseable
    row and named in its summary line); exit 1 when any row is invalid, 2 when a file cannot be
    read (``error: FILE: no such file`` / ``is a directory``)."""
    if not args:
        sys.stderr.write("usage: pivotrl validate FILE [FILE ...]\n")
        return 2
    bad = 0
    unreadable = False
    for path in args:
        try:
            rep = validate_file(path)
        except FileNotFoundError:
            sys.stderr.write(f"error: {path}: no such file\n")
            unreadable = True
            continue
        except IsADirectoryError:
            sys.stderr.write(f"error: {path}: is a directory\n")
            unreadable = True
            continue
        except OSError as e:
            sys.stderr.write(f"error: {path}: {e.strerror or e}\n")
            unreadable = True
            continue
        for p in rep.problems:
            sys.stdout.write(p + "\n")
        sys.stdout.write(f"{path}: {rep.format} file, {rep.rows} rows, {rep.invalid} invalid; {rep.summary()}\n")
        bad += rep.invalid
    if unreadable:
        return 2
    return 1 if bad else 0


@command("show-config", usage="pivotrl show-config [overrides]", help="print the resolved configuration")
def show_config_main(args: list[str]) -> int:
    """Print the resolved configuration as YAML (of the run ``run_dir=`` names, when it has one:
    ``pipeline.run_config``)."""
    try:
        cfg = load_run_config(args)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write(to_yaml(cfg))
    return 0
