"""``pivotrl <stage|command> [hydra overrides]``: one entry point, generated from the registries.

pivotrl run experiment=quickstart              # every stage of the experiment, in order
pivotrl profile experiment=quickstart profile.k=16
pivotrl validate runs/quickstart/pivots.jsonl  # check a pivot file, file:line: field: message
pivotrl show-config experiment=quickstart      # the resolved configuration
pivotrl export experiment=quickstart export.checkpoint=train export.out=hf_out  # HF safetensors
pivotrl import hf_dir=/path/to/hf out=runs/x/sft/checkpoint   # HF folder -> megatron checkpoint
pivotrl <stage> --help                         # what a stage does, reads and writes
"""

from __future__ import annotations

import logging
import sys
import warnings

from pivotrl_nemo import pipeline
from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.pipeline.stage import COMMANDS, STAGES, run_chain
from pivotrl_nemo.registry import closest
from pivotrl_nemo.utils.logging import configure_logging, get_logger
from pivotrl_nemo.utils.preemption import PREEMPTED_EXIT_CODE, Preempted

USAGE = __doc__ or ""


def _listing() -> str:
    lines = ["stages (pivotrl <stage> [overrides] [--force]):"]
    lines += [f"  {n:<12} {STAGES.get(n).help}" for n in STAGES.names()]
    lines += [
        "  run          every stage of the experiment in order (config key 'stages'; default: all above)",
        "commands:",
    ]
    lines += [f"  {n:<12} {COMMANDS.get(n).help}" for n in COMMANDS.names()]
    return "\n".join(lines) + "\n"


def _stage_help(name: str) -> str:
    s = STAGES.get(name)
    up = ", ".join(s.upstream) or "nothing"
    state = ", ".join(s.state_dirs) or "none"
    return (
        f"usage: pivotrl {name} [hydra overrides] [--force]\n\n{s.help}\n\n"
        f"needs: {up}; resumable state: {state}; "
        f"{'runs over every rank of a launch' if s.multi_rank else 'runs in one process'}\n"
        f"{(s.fn.__doc__ or '').strip()}\n"
    )


def _quiet_third_party() -> None:
    """megatron-core warns at every model build (deprecations, missing apex/TE on CPU); keep
    those out of the user's console unless they asked for DEBUG."""
    if get_logger("cli").getEffectiveLevel() > logging.DEBUG:
        warnings.filterwarnings("ignore", module=r"(megatron|torch|transformers)(\..*)?")
        for name in ("megatron", "torch.utils.cpp_extension"):
            logging.getLogger(name).setLevel(logging.ERROR)


def run_stages(cmd: str, args: list[str]) -> int:
    """``pivotrl run`` or ``pivotrl <stage>`` with Hydra overrides; returns the exit code."""
    force = "--force" in args
    overrides = [a for a in args if a != "--force"]
    try:
        cfg = load_config(overrides)
        names = run_chain(cfg) if cmd == "run" else [cmd]
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    runner = pipeline.Runner(cfg)
    runner.layout.root.mkdir(parents=True, exist_ok=True)
    configure_logging(cfg.log_level, log_file=str(runner.layout.log_file))
    _quiet_third_party()
    log = get_logger("cli")
    try:
        for name in names:
            runner.run(name, force=force and cmd != "run")
    except Preempted as e:
        log.warning("%s", e)
        return PREEMPTED_EXIT_CODE
    if "report" in names:
        log.info("report: %s", runner.layout.report_md)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE + "\n" + _listing())
        return 0
    cmd, rest = argv[0], argv[1:]
    wants_help = any(a in ("-h", "--help") for a in rest)
    if cmd in COMMANDS:
        c = COMMANDS.get(cmd)
        if wants_help:
            sys.stdout.write(f"usage: {c.usage or 'pivotrl ' + cmd}\n\n{c.help}\n")
            return 0
        return c.main(rest)
    if cmd in STAGES or cmd == "run":
        if wants_help:
            sys.stdout.write(_stage_help(cmd) if cmd != "run" else f"usage: pivotrl run [overrides]\n\n{_listing()}")
            return 0
        return run_stages(cmd, rest)
    known = [*STAGES.names(), "run", *COMMANDS.names()]
    sys.stderr.write(f"error: unknown command {cmd!r}{closest(cmd, known)}\n\n{_listing()}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
