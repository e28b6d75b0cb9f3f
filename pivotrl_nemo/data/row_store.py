"""``PivotRows``: the validated pivot rows of one file (or of one rank's shard of it), compact.

A BFCL-shaped row is ~20 KB of JSON, ~90% of it the tool list that every row of a task repeats,
and ~59 KB once parsed into dicts. Here each distinct tool list is parsed once and shared
(interned by a hash of its bytes, which the file's index locates: ``jsonl_index``), and the rest
of each row is kept as zlib-compressed JSON (~1 KB), parsed again only when the row is read
(``rows[i]``: a fresh dict whose ``tools`` is the shared, read-only list). So a rank holds its
share of a million candidates in a few hundred MB, and reads only that share from disk
(``load_pivot_rows(..., shard=(i, n))``, the profile shards' id hash).

Rows come back exactly as ``json.loads`` of their line would give them (same keys, same order), so
everything written from them is byte-identical to what the full dicts produced. Readers must not
mutate ``responses_create_params.tools`` (``PivotRow`` is read-only; ``attach_profile`` copies).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from ..utils.io import MAX_JSON_DEPTH, BoundsError, DataError, decode_json_line, json_loads_within
from ..utils.logging import get_logger
from .jsonl_index import NO_SPAN, JsonlIndex, index_entry_hash, scan_index
from .pivots import validate_pivot_row

log = get_logger(__name__)

RCP = "responses_create_params"
_PER_ROW_OVERHEAD = 8 + 33 + 8 + 4 + 8  # list slot + bytes header, id slot, ref, lineno


class PivotRows(Sequence[dict[str, Any]]):
    """A read-only sequence of pivot rows (dicts), materialized one at a time (see module doc).

    ``ids`` and ``linenos`` (1-based, in ``path``) are kept as they are; slicing gives a list."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids: list[str] = []
        self.linenos = array("q")
        self._blobs: list[bytes] = []
        self._tool_refs = array("i")
        self._tools: list[list[Any]] = []  # the interned tool lists
        self._tool_keys: dict[bytes, int] = {}
        self._tools_bytes = 0

    # ------------------------------------------------------------------ Sequence
    def __len__(self) -> int:
        return len(self._blobs)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(len(self)))]
        return self._row(range(len(self))[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self._row(j) for j in range(len(self)))

    def _row(self, j: int) -> dict[str, Any]:
        row = json.loads(zlib.decompress(self._blobs[j]))
        ref = self._tool_refs[j]
        if ref >= 0:
            row[RCP]["tools"] = self._tools[ref]
        return row

    def subset(self, positions: Sequence[int]) -> PivotRows:
        """The rows at ``positions`` (in that order), sharing this store's interned tool lists."""
        out = PivotRows(self.path)
        out._tools, out._tool_keys, out._tools_bytes = self._tools, self._tool_keys, self._tools_bytes
        for j in positions:
            out.ids.append(self.ids[j])
            out.linenos.append(self.linenos[j])
            out._blobs.append(self._blobs[j])
            out._tool_refs.append(self._tool_refs[j])
        return out

    def nbytes(self) -> int:
        """Estimated bytes held: compressed rows, ids, per-row bookkeeping, interned tool JSON."""
        per_row = sum(len(b) for b in self._blobs) + sum(49 + len(i) for i in self.ids)
        return per_row + len(self) * _PER_ROW_OVERHEAD + self._tools_bytes

    @property
    def distinct_tool_lists(self) -> int:
        return len(self._tools)

    # ------------------------------------------------------------------ loading
    def _intern_tools(self, raw: bytes) -> int:
        key = hashlib.blake2b(raw, digest_size=16).digest()
        ref = self._tool_keys.get(key)
        if ref is None:
            # the list sits two levels deep in the row (row -> params -> tools)
            tools = json_loads_within(raw.decode("utf-8"), MAX_JSON_DEPTH - 2)
            ref = self._tool_keys[key] = len(self._tools)
            self._tools.append(tools)
            self._tools_bytes += len(raw)
        return ref

    def _decode(self, raw: bytes, lineno: int, span: tuple[int, int]) -> tuple[Any, bytes, int]:
        """(row or DataError, the bytes to keep, tool ref): the line without its tool list when
        the span locates it, else the whole line."""
        start, end = span
        if start != NO_SPAN:
            try:
                ref = self._intern_tools(raw[start:end])
                rest = raw[:start] + b"null" + raw[end:]
                row = decode_json_line(rest, self.path, lineno)
                if isinstance(row.get(RCP), dict) and row[RCP].get("tools", 0) is None:
                    row[RCP]["tools"] = self._tools[ref]
                    return row, rest, ref
            except (DataError, BoundsError, ValueError, AttributeError):
                pass  # decoded whole below, for the exact message (column numbers) or a stale span
        try:
            return decode_json_line(raw, self.path, lineno), raw, -1
        except DataError as err:
            return err, raw, -1

    def _add(self, row: dict[str, Any], keep: bytes, ref: int, lineno: int) -> None:
        self.ids.append(row["id"])
        self.linenos.append(lineno)
        self._blobs.append(zlib.compress(keep, 1))
        self._tool_refs.append(ref)


def _lines(path: str, shard: tuple[int, int]) -> Iterator[tuple[int, bytes, Any, tuple[int, int]]]:
    """(lineno, raw line, decoded row or None, tools span) of the shard's lines, in file order.
    With a fresh index only those lines are read; without one the whole file is scanned once
    (every line parsed) and the index is saved for the next reader."""
    index, (i, n) = JsonlIndex.load(path), shard
    if index is not None:
        with open(path, "rb") as f:
            for p in index.shard(i, n):
                f.seek(index.offsets[p])
                yield index.linenos[p], f.readline(), None, (index.tools_start[p], index.tools_end[p])
        return
    log.info("%s: no up-to-date index; scanning the whole file once (and saving its index)", path)
    built = JsonlIndex.empty()
    for offset, lineno, raw, row, span in scan_index(path):
        hsh = index_entry_hash(row)
        built.add(offset, lineno, hsh, span)
        if n == 1 or hsh % n == i:
            yield lineno, raw, row, span
    try:
        built.save(path)
    except OSError as e:  # a read-only directory: the next reader scans again
        log.warning("%s: could not save its index (%s)", path, e)


@dataclass
class CheckedLine:
    """One valid row of a file: where it is, its line as read, and the row decoded."""

    lineno: int
    raw: bytes
    span: tuple[int, int]  # the tool list in ``raw`` (``NO_SPAN``s when not located)
    row: dict[str, Any]
    keep: bytes  # ``raw`` without its tool list when it is interned (``ref`` >= 0)
    ref: int


class CheckedLines:
    """The valid rows of a pivot file or of one shard of it, in file order (see
    ``load_pivot_rows`` for the rules); ``skipped`` counts the invalid ones so far. Tool lists
    are interned into ``store``."""

    def __init__(self, path: str, skip_invalid: bool, shard: tuple[int, int], store: PivotRows) -> None:
        self.path, self.skip_invalid, self.shard, self.store = path, skip_invalid, shard, store
        self.skipped = 0

    def __iter__(self) -> Iterator[CheckedLine]:
        seen: dict[str, int] = {}
        for lineno, raw, decoded, span in _lines(self.path, self.shard):
            if decoded is None or span[0] != NO_SPAN:
                row, keep, ref = self.store._decode(raw, lineno, span)
            else:  # scanned without an index and its tools not located: decoded already
                row, keep, ref = decoded, raw, -1
            problems = [(row.field, row.message)] if isinstance(row, DataError) else validate_pivot_row(row)
            if not problems and row["id"] in seen:
                problems = [("id", f"duplicate of the row at line {seen[row['id']]}")]
            if problems:
                if not self.skip_invalid:
                    raise DataError(self.path, lineno, *problems[0])
                self.skipped += 1
                continue
            seen[row["id"]] = lineno
            yield CheckedLine(lineno, raw, span, row, keep, ref)


class IndexedRows(Sequence[dict[str, Any]]):
    """The rows of a file whose index says they were validated (``JsonlIndex.validated``), read
    from disk when asked for: only the index is held (~40 B per row) and each distinct tool list
    once. For training, which samples a few rows per step from all pivots on every rank."""

    def __init__(self, path: str, index: JsonlIndex) -> None:
        self.path, self._index, self._store = path, index, PivotRows(path)
        self._file: Any = None

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(len(self)))]
        return self._row(range(len(self))[i])

    def _row(self, j: int) -> dict[str, Any]:
        if self._file is None:
            self._file = open(self.path, "rb")
        idx = self._index
        self._file.seek(idx.offsets[j])
        row, _, _ = self._store._decode(self._file.readline(), idx.linenos[j], (idx.tools_start[j], idx.tools_end[j]))
        if isinstance(row, DataError):  # the file changed under a fresh-looking index
            raise row
        return row

    def nbytes(self) -> int:
        """Bytes held: the index arrays and the interned tool lists' JSON."""
        return len(self._index) * 40 + self._store._tools_bytes


def load_pivot_rows(
    path: str | os.PathLike, skip_invalid: bool = False, shard: tuple[int, int] = (0, 1), lazy: bool = False
) -> tuple[Sequence[dict[str, Any]], int]:
    """The valid rows of a pivot file, or of shard ``shard = (index, count)`` of it (rows whose id
    hashes there, as ``profile_shards.shard_of``; lines without a readable id belong to shard 0).

    Stops at the first bad row (``file:line: field: message``) unless ``skip_invalid``, which
    returns (valid rows, number skipped). Row ids must be unique (they key prompt caches and
    profile resumption); equal ids hash alike, so each shard sees every duplicate of its ids.
    Memory: ~1-2 KB per BFCL-shaped row plus each distinct tool list once (``PivotRows``). With
    ``lazy``, a file whose fresh index says it was validated comes back as ``IndexedRows`` (the
    index alone in memory; the pipeline's own profile and filter outputs are such files)."""
    path = str(path)
    if lazy and shard == (0, 1):
        index = JsonlIndex.load(path)
        if index is not None and index.validated:
            return IndexedRows(path, index), 0
    out = PivotRows(path)
    lines = CheckedLines(path, skip_invalid, shard, out)
    for line in lines:
        out._add(line.row, line.keep, line.ref, line.lineno)
    return out, lines.skipped


def ids_of(rows: Sequence[Any]) -> list[str]:
    """The row ids of a ``PivotRows`` (without parsing a row) or of a list of row dicts."""
    return rows.ids if isinstance(rows, PivotRows) else [r["id"] for r in rows]


def select(rows: Sequence[Any], positions: Sequence[int]) -> Sequence[Any]:
    """The rows at ``positions``: a ``PivotRows`` subset (nothing parsed) or a list."""
    return rows.subset(positions) if isinstance(rows, PivotRows) else [rows[j] for j in positions]
