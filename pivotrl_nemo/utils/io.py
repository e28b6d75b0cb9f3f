"""Atomic file output and JSONL helpers. Every stage writes through these.

A file is written to ``<name>.tmp.<pid>`` in the same directory, flushed, fsynced and renamed,
so a reader (or a restarted stage) sees either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_JSON_DEPTH = 200
"""Deepest bracket nesting (``[`` / ``{``, outside strings) a JSONL row may have. Deeper rows are
refused before ``json.loads`` (``nested deeper than N``), so no reader, validator or deep copy
downstream can hit Python's recursion limit on untrusted data."""

_DEPTH_TOKEN_RE = re.compile(r"[\[\]{}\"'\\]")  # brackets, quotes, backslashes: all the scan looks at


def format_problem(path: str | os.PathLike, line: int, field: str, message: str) -> str:
    """``file:line: field: message``; the line is left out when 0 (the whole file), the field
    when empty (the whole row)."""
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


class DataError(ValueError, UserError):
    """Bad input data, always reported as ``file:line: field: message`` (see ``format_problem``).

    A ``UserError``: the CLI prints the message alone and exits 2."""

    def __init__(self, path: str | os.PathLike, line: int, field: str, message: str) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field, message
        super().__init__(format_problem(path, line, field, message))


def json_depth_exceeds(text: str, limit: int, quotes: str = '"') -> bool:
    """Whether ``text`` nests ``[`` / ``{`` more than ``limit`` deep outside string literals
    (delimited by any character of ``quotes``, backslash escapes honoured: JSON's double quote
    by default; give both quote characters for Python syntax).

    Linear in ``len(text)`` whatever the input (a scan of the bracket, quote and backslash
    characters only, never a backtracking regex), and free for a text with at most ``limit``
    opening brackets."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    quote = ""  # the open string literal's delimiter, "" outside strings
    escaped = -1  # the position a backslash escapes
    for m in _DEPTH_TOKEN_RE.finditer(text):
        ch, pos = m.group(), m.start()
        if quote:
            if pos == escaped:
                continue
            if ch == "\\":
                escaped = pos + 1
            elif ch == quote:
                quote = ""
        elif ch in quotes:
            quote = ch
        elif ch == "[" or ch == "{":
            depth += 1
            if depth > limit:
                return True
        elif ch == "]" or ch == "}":
            depth -= 1
    return False


MAX_NUMBER_DIGITS = 1000
"""Longest number (characters of its literal, sign and underscores aside) an untrusted JSON text
may hold: a completion (``data.actions``, which makes it ``unparseable``) or a tool call's
arguments string inside a row (``loads_bounded``: a validation problem). Far below Python's
4300-digit int conversion limit, so every accepted int can be printed and re-encoded, and
independent of ``sys.set_int_max_str_digits``."""


class BoundsError(ValueError):
    """A JSON text past ``MAX_NUMBER_DIGITS`` or a nesting limit; the message says which."""


def number_too_long(literal: str) -> bool:
    """Whether a number literal is longer than ``MAX_NUMBER_DIGITS``."""
    return len(literal.lstrip("+-").replace("_", "")) > MAX_NUMBER_DIGITS


def _bounded_int(s: str) -> int:
    if number_too_long(s):
        raise BoundsError(f"number longer than {MAX_NUMBER_DIGITS} digits")
    return int(s)


def _bounded_float(s: str) -> float:
    if number_too_long(s):
        raise BoundsError(f"number longer than {MAX_NUMBER_DIGITS} digits")
    return float(s)


def json_loads_within(text: str, max_depth: int) -> Any:
    """``json.loads`` of untrusted text: ``BoundsError`` when it nests deeper than ``max_depth``
    or holds a number longer than ``MAX_NUMBER_DIGITS``, JSONDecodeError when it is not JSON;
    never RecursionError."""
    if json_depth_exceeds(text, max_depth):
        raise BoundsError(f"nested deeper than {max_depth}")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float)
    except RecursionError:  # unreachable below a sane max_depth; kept so that nothing escapes
        raise BoundsError(f"nested deeper than {max_depth}") from None


def loads_bounded(text: str | bytes | bytearray) -> Any:
    """``json_loads_within(text, MAX_JSON_DEPTH)`` for JSON strings inside rows (tool-call
    arguments), which the line's own checks do not see into: ValueError (``BoundsError`` past the
    limits), never RecursionError; TypeError when ``text`` is not str / bytes."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not isinstance(text, str):
        raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(text).__name__}")
    return json_loads_within(text, MAX_JSON_DEPTH)


def decode_json_line(raw: bytes, path: str | os.PathLike, lineno: int) -> Any:
    """One JSONL line (bytes) decoded, or DataError: invalid UTF-8 (with the byte offset in the
    line), nesting deeper than ``MAX_JSON_DEPTH``, or not valid JSON (an integer too long for
    Python's int conversion included)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, lineno, "", f"invalid UTF-8 (byte offset {e.start})") from None
    if json_depth_exceeds(line, MAX_JSON_DEPTH):
        raise DataError(path, lineno, "", f"nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            path, lineno, "<row>", f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise DataError(path, lineno, "<row>", f"not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


SOURCE_RECORD = "source.json"
"""The file in a cached directory that names what it was made from (see ``publish_dir``)."""


def cached_dir_is_valid(directory: str | os.PathLike, record: dict[str, Any]) -> bool:
    """Whether ``directory`` was published by ``publish_dir`` from exactly ``record``."""
    marker = Path(directory) / SOURCE_RECORD
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()) == record)
    except (OSError, json.JSONDecodeError):
        return False


def publish_dir(target: str | os.PathLike, fill: Callable[[Path], object], record: dict[str, Any]) -> Path:
    """Make ``target`` a directory that ``fill(tmp)`` wrote, atomically: ``fill`` writes a temporary
    directory next to it, ``record`` goes into its ``source.json``, then one rename publishes it
    (an older copy is renamed away first). A reader sees the old directory, none, or the complete
    new one; a racing writer that published first wins when its record is the same."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1))
        stale = None
        if target.exists():
            stale = target.parent / f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(target, stale)
        try:
            os.rename(tmp, target)
        except OSError:
            if not cached_dir_is_valid(target, record):
                raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dumps_row(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=False)


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    lines = [dumps_row(r) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def iter_jsonl(path: str | os.PathLike, yield_errors: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, decoded_row)``. A malformed line (see ``decode_json_line``) raises
    DataError naming it, or, with ``yield_errors``, is yielded as ``(line_number, DataError)`` so
    the caller can skip it. Read as bytes, so that one bad byte is one bad line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = decode_json_line(raw, path, lineno)
            except DataError as err:
                if not yield_errors:
                    raise
                yield lineno, err
                continue
            yield lineno, row


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    return [row for _, row in iter_jsonl(path)]


class JsonlAppender:
    """Append-only JSONL log whose every record is one ``write`` + ``fsync``.

    Used for resumable stages: after a SIGKILL the file holds complete lines plus, at most, one
    torn last line, which ``read_complete`` drops.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, row: Any) -> None:
        self._f.write(dumps_row(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def repair(path: str | os.PathLike) -> list[Any]:
        """Truncate a log to its complete lines (drop a torn tail) and return their rows, so that
        appending after a crash never glues a new record onto half a line."""
        rows = JsonlAppender.read_complete(path)
        path = Path(path)
        if path.exists():
            with open(path, "rb") as f:
                data = f.read()
            good = 0
            for _ in range(len(rows)):
                good = data.index(b"\n", good) + 1
            if good != len(data):
                with open(path, "r+b") as f:
                    f.truncate(good)
        return rows

    @staticmethod
    def read_complete(path: str | os.PathLike) -> list[Any]:
        """Rows of complete lines; a torn final line (no newline / bad JSON) is ignored."""
        path = Path(path)
        if not path.exists():
            return []
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        return rows
