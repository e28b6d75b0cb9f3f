"""String rules of ``tool_call_schema``: what a string is decides how two of them are compared.

A string is recognised, from the expected value's text or its schema's ``format``, as one of
(first match wins; each is a rule name that verdict details quote):

- ``datetime`` / ``date`` / ``time``: ISO 8601 forms (``2023-09-12``, ``08:00``, ``2023-09-12
  08:00:00``, ``...T08:00Z``); compared as values, so ``T`` vs a space or ``:00`` seconds do not
  matter and another day, hour or time zone does. The prediction must be the same kind.
- ``email``, ``identifier``: exact after trimming (an id, a path, a file name or a URL with its
  case changed is another id; not even trimmed under ``string_normalisation='exact'``). An identifier is one token holding a digit or one of
  ``_ @ / \\ : #``, or a dot between word characters.
- ``short_text``: at most ``short_text_max_words`` words; equal after ``string_normalisation``.
- ``free_text``: longer; its numbers must be the expected ones (``free_text_numbers_exact``) and
  its similarity (``free_text_metric``) at least ``free_text_threshold``, after normalisation.

Every comparison is bounded: texts longer than ``MAX_EDIT_UNITS`` words or characters pass only
when equal, so a huge prediction costs one normalisation and one comparison.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, time, timedelta

from pivotrl_nemo.config.schema import SchemaVerifierConfig

MAX_EDIT_UNITS = 1000
"""Longest text (in the metric's units) the edit-distance similarity runs on; longer must be equal."""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_IDENTIFIER_MARK = re.compile(r"[\d_@/\\:#]|\w\.\w")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_FORMATS = {"date-time": "datetime", "date": "date", "time": "time", "email": "email", "uri": "identifier"}
_FORMATS.update({"uuid": "identifier", "hostname": "identifier", "ipv4": "identifier", "ipv6": "identifier"})


# ---------------------------------------------------------------------------------- recognition


def recognise(text: str, fmt: object, cfg: SchemaVerifierConfig) -> str:
    """The rule that compares ``text`` (the expected value) with a prediction (see module doc)."""
    by_format = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    if by_format in ("datetime", "date", "time") and cfg.recognise_datetimes:
        return by_format
    if by_format in ("email", "identifier") and cfg.exact_identifiers:
        return by_format
    s = text.strip()
    if cfg.recognise_datetimes:
        kind = _temporal_kind(s)
        if kind is not None:
            return kind
    if cfg.exact_identifiers and s and not any(c.isspace() for c in s):
        if _EMAIL.fullmatch(s):
            return "email"
        if _IDENTIFIER_MARK.search(s):
            return "identifier"
    return (
        "short_text" if len(normalise(s, cfg.string_normalisation).split()) <= cfg.short_text_max_words else "free_text"
    )


def _temporal_kind(s: str) -> str | None:
    if _DATETIME.fullmatch(s):
        return "datetime"
    if _DATE.fullmatch(s):
        return "date"
    if _TIME.fullmatch(s):
        return "time"
    return None


def _parse_temporal(kind: str, s: str) -> date | time | datetime | None:
    """The value of an ISO string of ``kind``, or None when it is not one (or not a real date)."""
    s = s.strip()
    if _temporal_kind(s) != kind:
        return None
    if kind == "time" and re.match(r"\d:", s):
        s = "0" + s
    if kind == "datetime" and re.search(r"[T ]\d:", s):
        s = re.sub(r"([T ])(\d):", r"\g<1>0\2:", s)
    try:
        if kind == "date":
            return date.fromisoformat(s)
        if kind == "time":
            return time.fromisoformat(s)
        return datetime.fromisoformat(s)
    except ValueError:
        return None


def _same_instant(a: date | time | datetime, b: date | time | datetime) -> bool:
    if isinstance(a, (datetime, time)) and isinstance(b, (datetime, time)):
        za, zb = a.utcoffset(), b.utcoffset()
        if (za is None) != (zb is None):  # naive vs aware: equal only when the aware one is UTC
            if (za if za is not None else zb) != timedelta(0):
                return False
            a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return a == b


# ---------------------------------------------------------------------------------- normalisation


def normalise(s: str, level: str) -> str:
    """``s`` under ``string_normalisation`` ``level`` (see ``SchemaVerifierConfig``)."""
    if level == "exact":
        return s
    s = s.strip()
    if level == "trim":
        return s
    if level == "case_space_punct":
        s = "".join(" " if unicodedata.category(c).startswith("P") else c for c in s)
    if level in ("case_space", "case_space_punct"):
        s = s.casefold()
    return " ".join(s.split())


def _edit_similarity(a: list[str] | str, b: list[str] | str, threshold: float) -> float:
    """``1 - levenshtein(a, b) / max(len)`` when that reaches ``threshold``, else 0.0. Banded: only
    cells within the distance budget of the diagonal are computed, O(len * budget)."""
    n, m = len(a), len(b)
    longest = max(n, m)
    if longest == 0:
        return 1.0
    budget = int((1.0 - threshold) * longest + 1e-9)
    if abs(n - m) > budget:
        return 0.0
    big = budget + 1  # any distance past the budget
    prev = {j: j for j in range(0, min(m, budget) + 1)}
    for i in range(1, n + 1):
        lo, hi = max(0, i - budget), min(m, i + budget)
        cur: dict[int, int] = {}
        for j in range(lo, hi + 1):
            if j == 0:
                cur[j] = i
                continue
            cur[j] = min(prev.get(j, big) + 1, cur.get(j - 1, big) + 1, prev.get(j - 1, big) + (a[i - 1] != b[j - 1]))
        if min(cur.values()) > budget:
            return 0.0
        prev = cur
    dist = prev.get(m, big)
    return 1.0 - dist / longest if dist <= budget else 0.0


def text_similarity(pred: str, exp: str, metric: str, threshold: float) -> float:
    """Similarity of two normalised texts under ``metric`` (``free_text_metric``), in [0, 1]."""
    if pred == exp:
        return 1.0
    a: list[str] | str = pred.split() if metric == "token_edit" else pred
    b: list[str] | str = exp.split() if metric == "token_edit" else exp
    if threshold >= 1.0 or max(len(a), len(b)) > MAX_EDIT_UNITS:
        return 0.0
    return _edit_similarity(a, b, threshold)


# ---------------------------------------------------------------------------------- comparison


def compare_strings(pred: str, exp: str, fmt: object, cfg: SchemaVerifierConfig) -> tuple[str, str | None]:
    """``(rule, None)`` when ``pred`` matches ``exp`` under the rule ``exp`` is recognised as,
    else ``(rule, why)``."""
    rule = recognise(exp, fmt, cfg)
    if cfg.string_normalisation == "exact" and pred != exp and pred.strip() == exp.strip():
        return rule, "surrounding whitespace differs (string_normalisation=exact)"
    if rule in ("datetime", "date", "time"):
        want, got = _parse_temporal(rule, exp), _parse_temporal(rule, pred)
        if want is None:  # a format-declared value that does not parse: compare as text
            return _compare_text("short_text", pred, exp, cfg)
        if got is None:
            return rule, f"not an ISO {rule.replace('datetime', 'date-time')}"
        return rule, None if _same_instant(got, want) else f"{got.isoformat()} != {want.isoformat()}"
    if rule in ("email", "identifier"):
        return rule, None if pred.strip() == exp.strip() else "differs (compared exactly)"
    return _compare_text(rule, pred, exp, cfg)


def normalised_equal(a: str, b: str, level: str) -> bool:
    """``a`` equals ``b`` under ``string_normalisation`` ``level``; at 'case_space_punct' also when
    only spaces differ (punctuation may split or join words: "gluten-free", "glutenfree")."""
    p, e = normalise(a, level), normalise(b, level)
    return p == e or (level == "case_space_punct" and p.replace(" ", "") == e.replace(" ", ""))


def _compare_text(rule: str, pred: str, exp: str, cfg: SchemaVerifierConfig) -> tuple[str, str | None]:
    level = cfg.string_normalisation
    p, e = normalise(pred, level), normalise(exp, level)
    label = f"{rule}({level})"
    if normalised_equal(pred, exp, level):
        return label, None
    if rule == "short_text":
        return label, "differs"
    if cfg.free_text_numbers_exact and sorted(_NUMBER.findall(pred)) != sorted(_NUMBER.findall(exp)):
        return label, "its numbers differ"
    if cfg.free_text_threshold >= 1.0:
        return label, "differs"
    sim = text_similarity(p, e, cfg.free_text_metric, cfg.free_text_threshold)
    if sim >= cfg.free_text_threshold:
        return label, None
    return label, f"{cfg.free_text_metric} similarity {sim:.3f} < {cfg.free_text_threshold}"
