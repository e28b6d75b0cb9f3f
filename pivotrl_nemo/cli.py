"""``pivotrl <stage|command> [hydra overrides]``: one entry point, generated from the registries.

pivotrl run experiment=quickstart              # every stage of the experiment, in order
pivotrl profile experiment=quickstart profile.k=16
pivotrl validate runs/quickstart/pivots.jsonl  # check a pivot file, file:line: field: message
pivotrl show-config experiment=quickstart      # the resolved configuration
pivotrl export run_dir=runs/quickstart export.checkpoint=train export.out=hf_out  # HF safetensors
pivotrl import hf_dir=/path/to/hf out=ckpt/x       # HF folder -> megatron checkpoint + ckpt/x/model.yaml
pivotrl run experiment=quickstart model_from=ckpt/x run_dir=runs/x   # train from it

A command naming an existing run directory continues that run: its config.yaml is the base and
the overrides go on top (``pipeline.run_config``).
pivotrl <stage> --help                         # what a stage does, reads and writes

Errors: a problem you can fix (bad data or configuration, stages out of order, no pivots, a path
that does not exist or may not be written, a full disk) prints one ``error:`` message saying what
to change and exits 2; any other failure prints ``error: <Type>: message`` and exits 1; Ctrl-C
exits 130, a checkpointed preemption 143 (130 after a Ctrl-C). ``--debug`` anywhere on the
command line (or PIVOTRL_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from pivotrl_nemo import pipeline
from pivotrl_nemo.config import PivotRLConfig
from pivotrl_nemo.pipeline.run_config import load_run_config
from pivotrl_nemo.pipeline.stage import COMMANDS, STAGES, run_chain
from pivotrl_nemo.registry import closest
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.logging import configure_logging, get_logger
from pivotrl_nemo.utils.preemption import Preempted

USAGE = __doc__ or ""
DEBUG_FLAG = "--debug"
USER_ERROR, FAILURE, INTERRUPTED = 2, 1, 130
"""Exit codes: a problem the user can fix, any other failure, Ctrl-C outside a checkpointed stop."""


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


def debug_requested(args: list[str]) -> tuple[bool, list[str]]:
    """Whether to show tracebacks (``--debug`` anywhere, or PIVOTRL_DEBUG=1), and ``args`` without
    the flag (Hydra never sees it)."""
    env = os.environ.get("PIVOTRL_DEBUG", "").strip().lower()
    return DEBUG_FLAG in args or env not in ("", "0", "false", "no"), [a for a in args if a != DEBUG_FLAG]


def _given_paths(args: list[str], cfg: PivotRLConfig | None = None) -> dict[str, str]:
    """Paths the user named (argument values, the config's input paths) -> how they were named.
    ``run_dir`` is left out: what is missing under it is a stage's output, not the user's input."""
    out: dict[str, str] = {}
    for a in args:
        key, sep, value = a.lstrip("+").partition("=")
        if key == "run_dir" or a.startswith("-"):
            continue
        value = (value if sep else a).strip().strip("'\"")
        if value and not value.startswith("["):
            out[value] = a
    if cfg is not None:
        for key, path in (
            ("data.path", cfg.data.path),
            ("model.init_checkpoint", cfg.model.init_checkpoint),
            ("model.tokenizer", cfg.model.tokenizer),
        ):
            if path:
                out.setdefault(path, f"{key}={path}")
    return out


def _named_by(filename: str, given: dict[str, str]) -> str | None:
    """The argument that named ``filename`` (or a directory above it), if any."""
    try:
        target = Path(filename).resolve()
        for value, arg in given.items():
            p = Path(value).resolve()
            if target == p or p in target.parents:
                return arg
    except (OSError, ValueError):
        return None
    return None


def classify(e: BaseException, given: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, message) for an exception that escaped a command; ``given``: the user's paths."""
    if isinstance(e, UserError):
        return USER_ERROR, str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" writing {e.filename}" if e.filename else ""
        return USER_ERROR, (
            f"no space left on device{where}: free some space or point run_dir at a disk with room, "
            "then re-run the same command to resume"
        )
    if isinstance(e, PermissionError):
        what = e.filename or str(e)
        return USER_ERROR, (
            f"permission denied: {what}: make it readable / writable by this user, or choose another path "
            "(run_dir=... for outputs)"
        )
    if isinstance(e, FileNotFoundError) and e.filename:
        arg = _named_by(str(e.filename), given or {})
        if arg is not None:
            return USER_ERROR, f"no such file or directory: {e.filename} (from `{arg}`); check the path"
    return FAILURE, f"{type(e).__name__}: {' '.join(str(e).split())}"


def _report(message: str, log_file: Path | None, exc: BaseException | None = None) -> None:
    """``error: message`` on stderr, and into the run's log file (with the traceback, if ``exc``)."""
    sys.stderr.write(f"error: {message}\n")
    if exc is not None:
        sys.stderr.write(f"run with {DEBUG_FLAG} (or PIVOTRL_DEBUG=1) for the traceback\n")
    if log_file is None:
        return
    root = logging.getLogger("pivotrl_nemo")
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = root.makeRecord("pivotrl_nemo.cli", logging.ERROR, __file__, 0, "error: %s", (message,), exc_info)
    target = os.path.abspath(log_file)  # as logging.FileHandler stores it
    for h in root.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == target:
            h.handle(record)


def guarded(
    body: Callable[[], int], debug: bool, given: dict[str, str], log_file: Callable[[], Path | None] = lambda: None
) -> int:
    """Run ``body`` and turn what escapes it into one message and an exit code (``debug``: re-raise)."""
    try:
        return body()
    except Preempted as e:  # a checkpointed stop: the launcher reads the exit code
        get_logger("cli").warning("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        _report("interrupted; re-run the same command to resume", log_file())
        return INTERRUPTED
    except Exception as e:
        if debug:
            raise
        code, message = classify(e, given)
        _report(message, log_file(), None if code == USER_ERROR else e)
        return code


def run_stages(cmd: str, args: list[str]) -> int:
    """``pivotrl run`` or ``pivotrl <stage>`` with Hydra overrides; returns the exit code."""
    debug, args = debug_requested(args)
    force = "--force" in args
    overrides = [a for a in args if a != "--force"]
    given = _given_paths(overrides)
    log_file: list[Path] = []

    def body() -> int:
        cfg = load_run_config(overrides)
        given.update({k: v for k, v in _given_paths([], cfg).items() if k not in given})
        names = run_chain(cfg) if cmd == "run" else [cmd]
        runner = pipeline.Runner(cfg)
        runner.layout.root.mkdir(parents=True, exist_ok=True)
        configure_logging(cfg.log_level, log_file=str(runner.layout.log_file))
        log_file.append(runner.layout.log_file)
        _quiet_third_party()
        log = get_logger("cli")
        if cfg.model.init_checkpoint:  # the vocabulary check at start-up, not at the first model stage
            log.info("vocabulary: %d embedding rows (checked against the tokenizer)", runner.runtime.vocab_size)
        with runner.lock():  # one writer for the whole chain, not just each stage
            for name in names:
                runner.run(name, force=force and cmd != "run")
        if "report" in names:
            log.info("report: %s", runner.layout.report_md)
        return 0

    return guarded(body, debug, given, lambda: log_file[0] if log_file else None)


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE + "\n" + _listing())
        return 0
    cmd, rest = argv[0], argv[1:]
    wants_help = any(a in ("-h", "--help") for a in rest)
    if cmd in COMMANDS:
        c = COMMANDS.get(cmd)
        if wants_help:
            usage = (c.usage or f"pivotrl {cmd}").removeprefix("usage:").strip()  # some say "usage:" already
            sys.stdout.write(f"usage: {usage}\n\n{c.help}\n")
            return 0
        return guarded(lambda: c.main(rest), debug, _given_paths(rest))
    if cmd in STAGES or cmd == "run":
        if wants_help:
            sys.stdout.write(_stage_help(cmd) if cmd != "run" else f"usage: pivotrl run [overrides]\n\n{_listing()}")
            return 0
        return run_stages(cmd, [*rest, DEBUG_FLAG] if debug else rest)
    known = [*STAGES.names(), "run", *COMMANDS.names()]
    sys.stderr.write(f"error: unknown command {cmd!r}{closest(cmd, known)}\n\n{_listing()}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
