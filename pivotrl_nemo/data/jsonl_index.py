"""Byte-offset index of a pivot-row JSONL file, so a rank reads only its own rows.

``IndexedJsonlWriter`` streams rows into ``<file>`` atomically (temporary file, fsync, rename) and
then writes ``<file>.idx`` next to it, also atomically. Per non-blank line the index holds its byte
offset, its line number, ``id_hash`` of the row id (the hash the profile shards use) and where the
two parts that repeat across rows sit in the line (``Spans``): ``responses_create_params.tools``
(~90% of a BFCL row) and a leading system / developer message of ``input`` (a tau2-style policy
document). A reader hashes those bytes and parses each distinct part once (``row_store``). The
JSONL itself stays the NVIDIA-compatible format: one self-contained row per line, byte-identical
to ``utils.io.dumps_row``.

An index is trusted only while the file's size, mtime and inode are those it recorded, checked on
the open handle that is then read; otherwise (a file written by hand, copied or replaced, or an
index left by a crash between the two renames) ``scan_index`` rebuilds it in one streaming pass
and ``row_store`` saves it when the directory is writable.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..utils.io import DataError, decode_json_line, dumps_row

FORMAT = "pivotrl-jsonl-index/1"
NO_SPAN = -1
"""The start / end of a part that the line does not have or that could not be located."""
Spans = tuple[int, int, int, int]
"""Byte spans in a line (from its start): the tool list (start, end), the system message (start, end)."""
NO_SPANS: Spans = (NO_SPAN, NO_SPAN, NO_SPAN, NO_SPAN)
_SENTINELS = ("\x00pivotrl-tools-placeholder\x00", "\x00pivotrl-system-placeholder\x00")
_SENTINEL_JSON = tuple(json.dumps(x) for x in _SENTINELS)


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


def system_item(row: Any) -> Any:
    """``input[0]`` when it is a system or developer message object (what repeats), else None."""
    rcp = row.get("responses_create_params") if isinstance(row, dict) else None
    items = rcp.get("input") if isinstance(rcp, dict) else None
    first = items[0] if isinstance(items, list) and items else None
    if (
        isinstance(first, dict)
        and first.get("role") in ("system", "developer")
        and first.get("type", "message") == "message"
    ):
        return first
    return None


@dataclass
class JsonlIndex:
    """Per non-blank line: byte offset, line number, id hash, part spans (bytes, from line start)."""

    offsets: array
    linenos: array
    hashes: array
    tools_start: array
    tools_end: array
    system_start: array
    system_end: array
    validated: bool = False
    """Every row passed ``validate_pivot_row`` and the ids are unique (the writer said so: rows
    that came out of ``load_pivot_rows``), so a reader may read them lazily, unchecked."""

    @classmethod
    def empty(cls) -> JsonlIndex:
        return cls(array("q"), array("q"), array("Q"), array("q"), array("q"), array("q"), array("q"))

    def __len__(self) -> int:
        return len(self.offsets)

    def _arrays(self) -> tuple[array, ...]:
        return (
            self.offsets,
            self.linenos,
            self.hashes,
            self.tools_start,
            self.tools_end,
            self.system_start,
            self.system_end,
        )

    def add(self, offset: int, lineno: int, hsh: int, spans: Spans) -> None:
        for arr, v in zip(self._arrays(), (offset, lineno, hsh, *spans)):
            arr.append(v)

    def spans(self, p: int) -> Spans:
        return self.tools_start[p], self.tools_end[p], self.system_start[p], self.system_end[p]

    def shard(self, index: int, count: int) -> list[int]:
        """Positions (into this index) of the lines of shard ``index`` of ``count``."""
        if count == 1:
            return list(range(len(self)))
        return [i for i, h in enumerate(self.hashes) if h % count == index]

    def save(self, path: str | os.PathLike, st: os.stat_result | None = None) -> None:
        """Write ``<path>.idx`` atomically, stamped with ``st``: the stat of the file this index
        describes, taken from the handle that was scanned or written (so a file replaced or
        changed meanwhile never matches); ``path``'s current stat by default."""
        st = os.stat(path) if st is None else st
        header = {"format": FORMAT, "rows": len(self), **_stamp(st), "validated": self.validated}
        target = index_path(path)
        tmp = target.with_name(f"{target.name}.tmp.{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(header).encode() + b"\n")
                for arr in self._arrays():
                    arr.tofile(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, data: BinaryIO | None = None) -> JsonlIndex | None:
        """The index of ``path`` when ``<path>.idx`` exists and matches the file (size, mtime,
        inode); else None. Pass the open file ``data`` that will be read with the index, so that
        the check is of that file and not of whatever ``path`` names a moment later."""
        try:
            st = os.stat(path) if data is None else os.fstat(data.fileno())
            with open(index_path(path), "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != FORMAT or any(header.get(k) != v for k, v in _stamp(st).items()):
                    return None
                n = int(header["rows"])
                idx = cls.empty()
                idx.validated = header.get("validated") is True
                for arr in idx._arrays():
                    arr.fromfile(f, n)
                return idx
        except (OSError, ValueError, KeyError, EOFError):
            return None


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What identifies one version of a file: a rewrite changes the size or mtime, a replacement
    (another file renamed over the path) the inode."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _find_once(line: bytes, needle: bytes, skip: int) -> tuple[int, int]:
    at = line.find(needle)
    if at < 0 or line.find(needle, at + 1) >= 0:
        return NO_SPAN, NO_SPAN
    return at + skip, at + len(needle)


def find_spans(line: bytes, row: Any) -> Spans:
    """Where the row's tool list and system message are in ``line`` (as ``dumps_row`` writes
    them; ``NO_SPAN`` where a part is absent, written otherwise, or not unique)."""
    tools, system = _tools_of(row), system_item(row)
    spans = list(NO_SPANS)
    if isinstance(tools, list):
        spans[0:2] = _find_once(line, b'"tools": ' + dumps_row(tools).encode("utf-8"), len(b'"tools": '))
    if system is not None:
        spans[2:4] = _find_once(line, b'"input": [' + dumps_row(system).encode("utf-8"), len(b'"input": ['))
    return spans[0], spans[1], spans[2], spans[3]


def scan_index(path: str | os.PathLike, data: BinaryIO) -> Iterator[tuple[int, int, bytes, Any, Spans]]:
    """One streaming pass over the open file ``data`` (``path``, for messages): ``(offset,
    lineno, raw line, row or DataError, spans)`` per non-blank line, for callers that build an
    index while they read."""
    offset = 0
    data.seek(0)
    for lineno, raw in enumerate(data, start=1):
        if raw.strip():
            try:
                row: Any = decode_json_line(raw, path, lineno)
            except DataError as err:
                row = err
            yield offset, lineno, raw, row, NO_SPANS if isinstance(row, DataError) else find_spans(raw, row)
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
        self._json_cache: dict[int, tuple[Any, bytes]] = {}  # id(part) -> (the part, its JSON)
        self.rows = 0

    def _part_json(self, part: Any) -> bytes:
        hit = self._json_cache.get(id(part))
        if hit is not None and hit[0] is part:  # the same object (rows of one trajectory share it)
            return hit[1]
        if len(self._json_cache) >= 64:
            self._json_cache.clear()
        data = dumps_row(part).encode("utf-8")
        self._json_cache[id(part)] = (part, data)
        return data

    def write(self, row: Any) -> None:
        """Append ``row`` as ``dumps_row`` writes it. The repeated parts are replaced by
        placeholders, the rest dumped, and each part's (cached) JSON spliced back in: the same
        bytes, and the spans come for free."""
        tools, system = _tools_of(row), system_item(row)
        parts = [(k, p) for k, p in ((0, tools if isinstance(tools, list) else None), (1, system)) if p is not None]
        if not parts:
            self.write_raw((dumps_row(row) + "\n").encode("utf-8"), _hash_of(row), NO_SPANS)
            return
        rcp = dict(row["responses_create_params"])
        for k, _ in parts:
            if k == 0:
                rcp["tools"] = _SENTINELS[0]
            else:
                rcp["input"] = [_SENTINELS[1], *rcp["input"][1:]]
        text = dumps_row({**row, "responses_create_params": rcp})
        at = {k: text.find(_SENTINEL_JSON[k]) for k, _ in parts}
        if any(a < 0 or text.count(_SENTINEL_JSON[k]) != 1 for k, a in at.items()):
            self.write_raw((dumps_row(row) + "\n").encode("utf-8"), _hash_of(row), NO_SPANS)
            return
        spans, chunks, pos, size = list(NO_SPANS), [], 0, 0
        for k, p in sorted(parts, key=lambda kp: at[kp[0]]):
            head = text[pos : at[k]].encode("utf-8")
            data = self._part_json(p)
            chunks += [head, data]
            size += len(head)
            spans[2 * k : 2 * k + 2] = [size, size + len(data)]
            size += len(data)
            pos = at[k] + len(_SENTINEL_JSON[k])
        chunks.append(text[pos:].encode("utf-8") + b"\n")
        self.write_raw(b"".join(chunks), _hash_of(row), (spans[0], spans[1], spans[2], spans[3]))

    def write_raw(self, line: bytes, hsh: int, spans: Spans) -> None:
        """Append one line as it is (``\\n``-terminated) with its id hash and part spans."""
        if not line.endswith(b"\n"):
            line += b"\n"
        self.rows += 1
        self._index.add(self._offset, self.rows, hsh, spans)
        self._f.write(line)
        self._offset += len(line)

    def close(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            st = os.fstat(self._f.fileno())  # what was written; a rename keeps inode and mtime
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._index.save(self.path, st)

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
