"""Atomic file output and JSONL helpers. Every stage writes through these.

A file is written to ``<name>.tmp.<pid>`` in the same directory, flushed, fsynced and renamed,
so a reader (or a restarted stage) sees either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data, always reported as ``file:line: field: message``."""

    def __init__(self, path: str | os.PathLike, line: int, field: str, message: str) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field, message
        super().__init__(f"{path}:{line}: {field}: {message}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    """Yield ``(line_number, decoded_row)``. A malformed line raises DataError naming it, or, with
    ``yield_errors``, is yielded as ``(line_number, DataError)`` so the caller can skip it."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                err = DataError(path, lineno, "<row>", f"not valid JSON ({e.msg} at column {e.colno})")
                if not yield_errors:
                    raise err from None
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
