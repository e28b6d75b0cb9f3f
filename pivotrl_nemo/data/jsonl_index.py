"""Byte-offset index of a pivot-row JSONL file, so a rank reads only its own rows.

``IndexedJsonlWriter`` streams rows into ``<file>`` atomically (temporary file, fsync, rename) and
then writes ``<file>.idx`` next to it, also atomically. Per non-blank line the index holds its byte
offset, its line number, ``id_hash`` of the row id (the hash the profile shards use) and where the
``responses_create_params.tools`` value sits in the line. The tool list is ~90% of a BFCL row and
repeats across rows, so a reader hashes those bytes and parses each distinct list once
(``row_store``). The JSONL itself stays the NVIDIA-compatible format: one self-contained row per
line, byte-identical to ``utils.io.dumps_row``.

An index is trusted only while the file's size and mtime are those it recorded; otherwise (a file
written by hand, copied, or an index left by a crash between the two renames) ``scan_index``
rebuilds it in one streaming pass and ``row_store`` saves it when the directory is writable.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.io import DataError, decode_json_line, dumps_row

FORMAT = "pivotrl-jsonl-index/1"
NO_SPAN = -1
"""``tools_start`` / ``tools_end`` of a line whose tool list could not be located."""
_SENTINEL = "\x00pivotrl-tools-placeholder\x00"
_SENTINEL_JSON = json.dumps(_SENTINEL)


def id_hash(row_id: str) -> int:
    """A stable 64-bit hash of a row id (same on every machine and Python run)."""
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "big")


def index_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".idx")


def _hash_of(row: Any) -> int:
    """``id_hash`` of the row's id; 0 (shard 0 of any count) for a row without a string id."""
    rid = row.get("id") if isinstance(row, dict) else None
    return id_hash(rid) if isinstance(rid, str) else 0


def _tools_of(row: Any) -> Any:
    rcp = row.get("responses_create_params") if isinstance(row, dict) else None
    return rcp.get("tools") if isinstance(rcp, dict) else None


@dataclass
class JsonlIndex:
    """Per non-blank line: byte offset, line number, id hash, tools span (bytes, from line start)."""

    offsets: array
    linenos: array
    hashes: array
    tools_start: array
    tools_end: array
    validated: bool = False
    """Every row passed ``validate_pivot_row`` and the ids are unique (the writer said so: rows
    that came out of ``load_pivot_rows``), so a reader may read them lazily, unchecked."""

    @classmethod
    def empty(cls) -> JsonlIndex:
        return cls(array("q"), array("q"), array("Q"), array("q"), array("q"))

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, lineno: int, hsh: int, span: tuple[int, int]) -> None:
        self.offsets.append(offset)
        self.linenos.append(lineno)
        self.hashes.append(hsh)
        self.tools_start.append(span[0])
        self.tools_end.append(span[1])

    def shard(self, index: int, count: int) -> list[int]:
        """Positions (into this index) of the lines of shard ``index`` of ``count``."""
        if count == 1:
            return list(range(len(self)))
        return [i for i, h in enumerate(self.hashes) if h % count == index]

    def save(self, path: str | os.PathLike) -> None:
        """Write ``<path>.idx`` atomically, stamped with ``path``'s current size and mtime."""
        st = os.stat(path)
        header = {
            "format": FORMAT,
            "rows": len(self),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "validated": self.validated,
        }
        target = index_path(path)
        tmp = target.with_name(f"{target.name}.tmp.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            for arr in (self.offsets, self.linenos, self.hashes, self.tools_start, self.tools_end):
                arr.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike) -> JsonlIndex | None:
        """The index of ``path`` when ``<path>.idx`` exists and matches the file; else None."""
        try:
            st = os.stat(path)
            with open(index_path(path), "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != FORMAT or (header["size"], header["mtime_ns"]) != (
                    st.st_size,
                    st.st_mtime_ns,
                ):
                    return None
                n = int(header["rows"])
                idx = cls.empty()
                idx.validated = header.get("validated") is True
                for arr in (idx.offsets, idx.linenos, idx.hashes, idx.tools_start, idx.tools_end):
                    arr.fromfile(f, n)
                return idx
        except (OSError, ValueError, KeyError, EOFError):
            return None


def tools_span(line: bytes, row: Any) -> tuple[int, int]:
    """Where the row's tool list is in ``line`` (as ``dumps_row`` writes it), or ``NO_SPAN``s."""
    tools = _tools_of(row)
    if not isinstance(tools, list):
        return NO_SPAN, NO_SPAN
    needle = b'"tools": ' + dumps_row(tools).encode("utf-8")
    at = line.find(needle)
    if at < 0 or line.find(needle, at + 1) >= 0:
        return NO_SPAN, NO_SPAN
    start = at + len(b'"tools": ')
    return start, at + len(needle)


def scan_index(path: str | os.PathLike) -> Iterator[tuple[int, int, bytes, Any, tuple[int, int]]]:
    """One streaming pass over ``path``: ``(offset, lineno, raw line, row or DataError, tools span)``
    per non-blank line, for callers that build an index while they read."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    row: Any = decode_json_line(raw, path, lineno)
                except DataError as err:
                    row = err
                span = tools_span(raw, row) if not isinstance(row, DataError) else (NO_SPAN, NO_SPAN)
                yield offset, lineno, raw, row, span
            offset += len(raw)


def index_entry_hash(row: Any) -> int:
    """The index's id hash of a decoded line (a DataError or an id-less row: 0, i.e. shard 0)."""
    return 0 if isinstance(row, DataError) else _hash_of(row)


class IndexedJsonlWriter:
    """Stream rows to ``path`` atomically and index them (see module doc); a context manager.

    Nothing is published unless the block exits cleanly: on an exception the temporary file is
    removed and an existing ``path`` is left as it was."""

    def __init__(self, path: str | os.PathLike, validated: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f"{self.path.name}.tmp.{os.getpid()}")
        self._f = open(self._tmp, "wb")
        self._index = JsonlIndex.empty()
        self._index.validated = validated  # see JsonlIndex.validated: only for checked rows
        self._offset = 0
        self._tools_cache: dict[int, tuple[Any, bytes]] = {}  # id(tools) -> (the list, its JSON)
        self.rows = 0

    def _tools_json(self, tools: list) -> bytes:
        hit = self._tools_cache.get(id(tools))
        if hit is not None and hit[0] is tools:  # the same object (rows of one trajectory share it)
            return hit[1]
        if len(self._tools_cache) >= 64:
            self._tools_cache.clear()
        data = dumps_row(tools).encode("utf-8")
        self._tools_cache[id(tools)] = (tools, data)
        return data

    def write(self, row: Any) -> None:
        tools = _tools_of(row)
        span = (NO_SPAN, NO_SPAN)
        if isinstance(tools, list):
            # dump the row with a placeholder, then splice in the (cached) tool-list JSON: the
            # same bytes as dumps_row(row), and the span comes for free
            rcp = dict(row["responses_create_params"])
            rcp["tools"] = _SENTINEL
            head, sep, tail = dumps_row({**row, "responses_create_params": rcp}).partition(_SENTINEL_JSON)
            if sep and _SENTINEL_JSON not in tail:
                pre, tj = head.encode("utf-8"), self._tools_json(tools)
                line = pre + tj + tail.encode("utf-8") + b"\n"
                span = (len(pre), len(pre) + len(tj))
            else:
                line = (dumps_row(row) + "\n").encode("utf-8")
        else:
            line = (dumps_row(row) + "\n").encode("utf-8")
        self.write_raw(line, _hash_of(row), span)

    def write_raw(self, line: bytes, hsh: int, span: tuple[int, int]) -> None:
        """Append one line as it is (``\\n``-terminated) with its id hash and tools span."""
        if not line.endswith(b"\n"):
            line += b"\n"
        self.rows += 1
        self._index.add(self._offset, self.rows, hsh, span)
        self._f.write(line)
        self._offset += len(line)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        self._index.save(self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexedJsonlWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_indexed_jsonl(path: str | os.PathLike, rows: Any, validated: bool = False) -> int:
    """Write an iterable of rows with ``IndexedJsonlWriter``; returns how many."""
    with IndexedJsonlWriter(path, validated) as w:
        for row in rows:
            w.write(row)
    return w.rows
