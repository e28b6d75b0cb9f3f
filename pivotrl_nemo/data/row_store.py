"""``PivotRows``: the validated pivot rows of one file (or of one rank's shard of it), compact.

A BFCL-shaped row is ~20 KB of JSON, ~90% of it the tool list that every row of a task repeats,
and ~59 KB once parsed into dicts. Here each distinct tool list and leading system message is
parsed once and shared (interned by a hash of its bytes, which the file's index locates:
``jsonl_index``), and the rest of each row is kept as zlib-compressed JSON (~1 KB), parsed again
only when the row is read (``rows[i]``: a fresh dict whose ``tools`` and ``input[0]`` system
message are the shared, read-only objects). So a rank holds its
share of a million candidates in a few hundred MB, and reads only that share from disk
(``load_pivot_rows(..., shard=(i, n))``, the profile shards' id hash).

Rows come back exactly as ``json.loads`` of their line would give them (same keys, same order), so
everything written from them is byte-identical to what the full dicts produced. Readers must not
mutate ``responses_create_params.tools`` or its system message (``PivotRow`` is read-only;
``attach_profile`` copies).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, overload

from ..utils.io import MAX_JSON_DEPTH, BoundsError, DataError, decode_json_line, json_loads_within
from ..utils.logging import get_logger
from .jsonl_index import NO_SPAN, NO_SPANS, JsonlIndex, Spans, index_entry_hash, scan_index
from .pivots import validate_pivot_row

log = get_logger(__name__)

RCP = "responses_create_params"
_PER_ROW_OVERHEAD = 8 + 33 + 8 + 4 + 4 + 8  # list slot + bytes header, id slot, two refs, lineno
_DEPTH = (2, 3)  # how deep the shared parts sit: row -> params -> tools; row -> params -> input -> item


class _Rows(Sequence[dict[str, Any]]):
    """Rows materialized one at a time by ``_row(j)``; slicing gives a list of dicts."""

    def _row(self, j: int) -> dict[str, Any]:
        raise NotImplementedError

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


class PivotRows(_Rows):
    """A read-only sequence of pivot rows (dicts), materialized one at a time (see module doc).

    ``ids`` and ``linenos`` (1-based, in ``path``) are kept as they are; slicing gives a list."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids: list[str] = []
        self.linenos = array("q")
        self._blobs: list[bytes] = []
        self._refs = (array("i"), array("i"))  # per row: its tool list's, its system message's
        self._shared: list[Any] = []  # the interned parts
        self._shared_keys: dict[bytes, int] = {}
        self._shared_bytes = 0

    # ------------------------------------------------------------------ Sequence
    def __len__(self) -> int:
        return len(self._blobs)

    def _row(self, j: int) -> dict[str, Any]:
        return self._restore(json.loads(zlib.decompress(self._blobs[j])), self._refs[0][j], self._refs[1][j])

    def _restore(self, row: Any, tools_ref: int, system_ref: int) -> Any:
        if tools_ref >= 0:
            row[RCP]["tools"] = self._shared[tools_ref]
        if system_ref >= 0:
            row[RCP]["input"][0] = self._shared[system_ref]
        return row

    def subset(self, positions: Sequence[int]) -> PivotRows:
        """The rows at ``positions`` (in that order), sharing this store's interned tool lists."""
        out = PivotRows(self.path)
        out._shared, out._shared_keys, out._shared_bytes = self._shared, self._shared_keys, self._shared_bytes
        for j in positions:
            out.ids.append(self.ids[j])
            out.linenos.append(self.linenos[j])
            out._blobs.append(self._blobs[j])
            out._refs[0].append(self._refs[0][j])
            out._refs[1].append(self._refs[1][j])
        return out

    def nbytes(self) -> int:
        """Estimated bytes held: compressed rows, ids, per-row bookkeeping, interned parts' JSON."""
        per_row = sum(len(b) for b in self._blobs) + sum(49 + len(i) for i in self.ids)
        return per_row + len(self) * _PER_ROW_OVERHEAD + self._shared_bytes

    @property
    def distinct_shared_parts(self) -> int:
        """How many distinct tool lists and system messages were parsed (each once)."""
        return len(self._shared)

    # ------------------------------------------------------------------ loading
    def _intern(self, raw: bytes, depth: int) -> int:
        key = hashlib.blake2b(raw, digest_size=16).digest()
        ref = self._shared_keys.get(key)
        if ref is None:
            part = json_loads_within(raw.decode("utf-8"), MAX_JSON_DEPTH - depth)
            ref = self._shared_keys[key] = len(self._shared)
            self._shared.append(part)
            self._shared_bytes += len(raw)
        return ref

    def _decode(self, raw: bytes, lineno: int, spans: Spans) -> tuple[Any, bytes, int, int]:
        """(row or DataError, the bytes to keep, tools ref, system ref): the line without its
        shared parts where the spans locate them (each replaced by ``null``), else the whole line."""
        located = [(k, spans[2 * k], spans[2 * k + 1]) for k in (0, 1) if spans[2 * k] != NO_SPAN]
        if located:
            try:
                refs, rest = [-1, -1], raw
                for k, start, end in sorted(located, key=lambda x: -x[1]):  # from the right: offsets hold
                    refs[k] = self._intern(raw[start:end], _DEPTH[k])
                    rest = rest[:start] + b"null" + rest[end:]
                row = decode_json_line(rest, self.path, lineno)
                rcp = row.get(RCP)
                if (refs[0] < 0 or rcp["tools"] is None) and (refs[1] < 0 or rcp["input"][0] is None):
                    return self._restore(row, refs[0], refs[1]), rest, refs[0], refs[1]
            except (DataError, BoundsError, ValueError, AttributeError, KeyError, IndexError, TypeError):
                pass  # decoded whole below, for the exact message (column numbers) or a stale span
        try:
            return decode_json_line(raw, self.path, lineno), raw, -1, -1
        except DataError as err:
            return err, raw, -1, -1

    def _add(self, row: dict[str, Any], keep: bytes, refs: tuple[int, int], lineno: int) -> None:
        self.ids.append(row["id"])
        self.linenos.append(lineno)
        self._blobs.append(zlib.compress(keep, 1))
        self._refs[0].append(refs[0])
        self._refs[1].append(refs[1])


LineRead = tuple[int, bytes, Any, Spans]
"""(lineno, raw line, decoded row or None, part spans)."""


def _lines(path: str, shard: tuple[int, int], f: BinaryIO, index: JsonlIndex | None) -> Iterator[LineRead]:
    """(lineno, raw line, decoded row or None, part spans) of the shard's lines of the open file
    ``f``, in file order. With its fresh ``index`` only those lines are read; without one the
    whole file is scanned once (every line parsed) and the index is saved for the next reader."""
    i, n = shard
    if index is not None:
        for p in index.shard(i, n):
            f.seek(index.offsets[p])
            yield index.linenos[p], f.readline(), None, index.spans(p)
        return
    log.info("%s: no up-to-date index; scanning the whole file once (and saving its index)", path)
    st, built = os.fstat(f.fileno()), JsonlIndex.empty()  # stamped with the file as it was opened
    for offset, lineno, raw, row, span in scan_index(path, f):
        hsh = index_entry_hash(row)
        built.add(offset, lineno, hsh, span)
        if n == 1 or hsh % n == i:
            yield lineno, raw, row, span
    try:
        built.save(path, st)
    except OSError as e:  # a read-only directory: the next reader scans again
        log.warning("%s: could not save its index (%s)", path, e)


@dataclass
class CheckedLine:
    """One valid row of a file: where it is, its line as read, and the row decoded."""

    lineno: int
    raw: bytes
    spans: Spans  # the shared parts in ``raw`` (``jsonl_index.Spans``)
    row: dict[str, Any]
    keep: bytes  # ``raw`` without its shared parts where they are interned (``refs`` >= 0)
    refs: tuple[int, int]


class CheckedLines:
    """The valid rows of a pivot file or of one shard of it, in file order (see
    ``load_pivot_rows`` for the rules); ``skipped`` counts the invalid ones so far. Tool lists
    are interned into ``store``."""

    def __init__(self, path: str, skip_invalid: bool, shard: tuple[int, int], store: PivotRows) -> None:
        self.path, self.skip_invalid, self.shard, self.store = path, skip_invalid, shard, store
        self.skipped = 0
        self.canonical = False
        """Set when iteration starts: the file's fresh index says the pipeline wrote it
        (``JsonlIndex.validated``), so every ``raw`` line is exactly ``dumps_row`` of its row."""

    def __iter__(self) -> Iterator[CheckedLine]:
        with open(self.path, "rb") as f:
            index = JsonlIndex.load(self.path, f)
            self.canonical = index is not None and index.validated
            yield from self._checked(_lines(self.path, self.shard, f, index))

    def _checked(self, lines: Iterator[LineRead]) -> Iterator[CheckedLine]:
        seen: dict[str, int] = {}
        for lineno, raw, decoded, spans in lines:
            if decoded is None or spans != NO_SPANS:
                row, keep, tools_ref, system_ref = self.store._decode(raw, lineno, spans)
            else:  # scanned without an index, no shared part located: decoded already
                row, keep, tools_ref, system_ref = decoded, raw, -1, -1
            problems = [(row.field, row.message)] if isinstance(row, DataError) else validate_pivot_row(row)
            if not problems and row["id"] in seen:
                problems = [("id", f"duplicate of the row at line {seen[row['id']]}")]
            if problems:
                if not self.skip_invalid:
                    raise DataError(self.path, lineno, *problems[0])
                self.skipped += 1
                continue
            seen[row["id"]] = lineno
            yield CheckedLine(lineno, raw, spans, row, keep, (tools_ref, system_ref))


class IndexedRows(_Rows):
    """The rows of a file whose index says they were validated (``JsonlIndex.validated``), read
    from disk when asked for: only the index is held (~56 B per row) and each distinct tool list
    once. For training, which samples a few rows per step from all pivots on every rank."""

    def __init__(self, path: str, index: JsonlIndex, f: BinaryIO) -> None:
        """``f``: the open file ``index`` was checked against. It is kept open, so a file that
        replaces ``path`` later (filter run again) is never read with this index."""
        self.path, self._index, self._store, self._file = path, index, PivotRows(path), f

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        self._file.close()

    def _row(self, j: int) -> dict[str, Any]:
        idx = self._index
        self._file.seek(idx.offsets[j])
        row = self._store._decode(self._file.readline(), idx.linenos[j], idx.spans(j))[0]
        if isinstance(row, DataError):  # the file changed under a fresh-looking index
            raise row
        return row

    def nbytes(self) -> int:
        """Bytes held: the index arrays and the interned tool lists' JSON."""
        return len(self._index) * 56 + self._store._shared_bytes


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
        f = open(path, "rb")
        index = JsonlIndex.load(path, f)
        if index is not None and index.validated:
            return IndexedRows(path, index, f), 0
        f.close()
    out = PivotRows(path)
    lines = CheckedLines(path, skip_invalid, shard, out)
    for line in lines:
        out._add(line.row, line.keep, line.refs, line.lineno)
    return out, lines.skipped


def ids_of(rows: Sequence[Any]) -> list[str]:
    """The row ids of a ``PivotRows`` (without parsing a row) or of a list of row dicts."""
    return rows.ids if isinstance(rows, PivotRows) else [r["id"] for r in rows]


def select(rows: Sequence[Any], positions: Sequence[int]) -> Sequence[Any]:
    """The rows at ``positions``: a ``PivotRows`` subset (nothing parsed) or a list."""
    return rows.subset(positions) if isinstance(rows, PivotRows) else [rows[j] for j in positions]
