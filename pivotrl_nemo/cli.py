"""``pivotrl <stage> [hydra overrides]``: one entry point for every stage.

    pivotrl run experiment=quickstart              # every stage of the experiment, in order
    pivotrl profile experiment=quickstart profile.k=16
    pivotrl validate runs/quickstart/pivots.jsonl  # check a pivot file, file:line: field: message
    pivotrl show-config experiment=quickstart      # the resolved configuration
    pivotrl export experiment=quickstart export.checkpoint=train export.out=hf_out  # HF safetensors
    pivotrl import hf_dir=/path/to/hf out=runs/x/sft/checkpoint   # HF folder -> megatron checkpoint
"""

from __future__ import annotations

import sys

from .utils.logging import configure_logging, get_logger

USAGE = __doc__ or ""
STAGE_CMDS = ("build", "sft", "extract", "profile", "filter", "train", "eval", "report")


def _validate(args: list[str]) -> int:
    from .data.pivots import validate_file

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


def _quiet_third_party() -> None:
    """megatron-core warns at every model build (deprecations, missing apex/TE on CPU); keep
    those out of the user's console unless they asked for DEBUG."""
    import logging
    import warnings

    if get_logger("cli").getEffectiveLevel() > logging.DEBUG:
        warnings.filterwarnings("ignore", module=r"(megatron|torch|transformers)(\..*)?")
        for name in ("megatron", "torch.utils.cpp_extension"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE + "\nstages: " + " ".join(STAGE_CMDS)
                         + " | run | validate | export | import | show-config\n")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "validate":
        return _validate(rest)
    if cmd == "export":
        from .export_cli import export_main

        return export_main(rest)
    if cmd == "import":
        from .export_cli import import_main

        return import_main(rest)
    from .config import ConfigError, load_config, to_yaml

    force = "--force" in rest
    rest = [a for a in rest if a != "--force"]
    try:
        cfg = load_config(rest)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if cmd == "show-config":
        sys.stdout.write(to_yaml(cfg))
        return 0
    from pathlib import Path

    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    configure_logging(cfg.log_level, log_file=str(Path(cfg.run_dir) / "pivotrl.log"))
    _quiet_third_party()
    log = get_logger("cli")
    from .stage_impl import STAGE_FUNCS
    from .stages import Runner

    runner = Runner(cfg)
    if cmd == "run":
        stages = cfg.stages
    elif cmd in STAGE_CMDS:
        stages = [cmd]
    else:
        sys.stderr.write(f"error: unknown command {cmd!r}\n{USAGE}")
        return 2
    from .utils.preemption import PREEMPTED_EXIT_CODE, Preempted

    try:
        for s in stages:
            runner.run(s, STAGE_FUNCS[s], force=force and cmd != "run")
    except Preempted as e:
        log.warning("%s", e)
        return PREEMPTED_EXIT_CODE
    if "report" in stages:
        log.info("report: %s", Path(cfg.run_dir) / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
