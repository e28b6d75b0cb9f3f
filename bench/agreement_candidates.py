"""Candidate completions for the verifier agreement benchmark.

``candidates(row, rng)`` rewrites a pivot row's expected call(s) (``function_call`` or
``function_call_batch``) with generic edits, one candidate per applicable kind: edits that look
equivalent (reordered keys, Python call syntax, another acceptable value, a case change, ...) and
near misses (another function, a dropped required argument, a changed number, ...). A kind says how
a candidate was made, never whether it is right: the judge (BFCL's checker) labels every candidate.
The edits are chosen from the row alone (its expected calls, ``acceptable_arguments`` when present
and the tools' JSON schemas), without looking at what any verifier does.

``completion`` is the text a policy would emit: one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
block per call, or BFCL's Python call syntax for kind ``python_syntax``. Deterministic for a given
``random.Random`` state; each kind draws from its own generator seeded from one draw of ``rng``, so a
kind's candidate does not depend on which other kinds are asked for.

This file is not part of a package: import it by path (``importlib.util.spec_from_file_location``).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import keyword
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.verifiers.tool_call_schema import schema_types

Call = tuple[str, dict[str, Any]]

EQUIVALENT_LOOKING: tuple[str, ...] = tuple(
    "exact reorder_args python_syntax alt_value omit_optional add_default int_for_float float_for_int"
    " string_case string_space string_punct date_format list_reorder call_reorder".split()
)
NEAR_MISS: tuple[str, ...] = tuple(
    "wrong_function drop_required extra_arg number_change number_as_string string_word_swap string_other"
    " string_pad string_truncate date_shift bool_flip enum_other list_drop list_dup nested_change"
    " duplicate_call drop_call surplus_call huge_argument deep_nesting".split()
)
ALL_KINDS: tuple[str, ...] = EQUIVALENT_LOOKING + NEAR_MISS
KIND_GROUPS: dict[str, list[str]] = {"equivalent_looking": list(EQUIVALENT_LOOKING), "near_miss": list(NEAR_MISS)}

HUGE_COPIES = 5_000
DEEP_LEVELS = 40
_EXTRA_ARG_NAMES = ("verbose", "debug", "dry_run", "extra_option")
_FALLBACK_WORDS = ("apple", "river", "seven", "market", "north", "window", "garden", "silver")
_NAME_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_DATETIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})([T ])(\d{2}):(\d{2})(:\d{2})?(.*)")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME_RE = re.compile(r"(\d{2}):(\d{2})(:\d{2})?")


@dataclass(frozen=True)
class Candidate:
    """One completion: how it was made (``kind``, ``note``), its text and the calls it encodes."""

    kind: str
    completion: str
    calls: list[Call]
    note: str = ""


# ---------------------------------------------------------------------------------- row context


def _decode_args(arguments: Any) -> dict[str, Any]:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    if not isinstance(args, dict):
        raise ValueError(f"expected arguments are not a JSON object: {arguments!r:.80}")
    return args


def expected_calls(row: dict[str, Any]) -> tuple[list[Call], list[dict[str, Any] | None]]:
    """The row's expected calls and, per call, its ``acceptable_arguments`` (None when absent)."""
    expected = row["expected_action"]
    kind = expected.get("type")
    if kind not in ("function_call", "function_call_batch"):
        raise ValueError(f"row {row.get('id')!r}: expected_action is {kind!r}, not a call")
    entries = [expected] if kind == "function_call" else list(expected["calls"])
    calls = [(e["name"], _decode_args(e["arguments"])) for e in entries]
    return calls, [e.get("acceptable_arguments") for e in entries]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def row_strings(row: dict[str, Any]) -> list[str]:
    """The non-empty string values of the row's expected calls (a pool for other rows' edits)."""
    calls, _ = expected_calls(row)
    return [s for _, args in calls for s in _strings(args) if s.strip()]


@dataclass
class _Ctx:
    calls: list[Call]
    acceptable: list[dict[str, Any] | None]
    tools: dict[str, dict[str, Any]]
    pool: Sequence[str]  # other rows' strings

    def props(self, name: str) -> dict[str, Any]:
        props = self.tools.get(name, {}).get("properties", {})
        return props if isinstance(props, dict) else {}

    def required(self, name: str) -> set[str]:
        req = self.tools.get(name, {}).get("required", [])
        return set(req) if isinstance(req, list) else set()

    def spec(self, ci: int, param: str) -> dict[str, Any]:
        spec = self.props(self.calls[ci][0]).get(param, {})
        return spec if isinstance(spec, dict) else {}


def _key(value: Any) -> str:
    """Type-strict identity (``5`` != ``5.0`` != ``True``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def render_tool_calls(calls: Sequence[Call]) -> str:
    """``<tool_call>`` blocks, one per call (the policy's format)."""
    return "\n".join(
        "<tool_call>" + json.dumps({"name": n, "arguments": a}, ensure_ascii=False) + "</tool_call>" for n, a in calls
    )


def render_python(calls: Sequence[Call]) -> str | None:
    """BFCL's Python call syntax (``f(a=1)``, ``[f(a=1), g(b='x')]``); None when a name cannot be written."""
    parts = []
    for name, args in calls:
        if not _NAME_RE.fullmatch(name) or any(not k.isidentifier() or keyword.iskeyword(k) for k in args):
            return None
        parts.append(f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})")
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"


# ---------------------------------------------------------------------------------- edit helpers

Edit = tuple[list[Call], str]
Site = tuple[int, str]
Pred = Callable[[Any, dict[str, Any]], bool]
Options = Callable[[Any, "_Ctx", random.Random], list[Any]]


def _sites(ctx: _Ctx, pred: Pred) -> list[Site]:
    """Top-level arguments ``(call index, name)`` whose value and schema satisfy ``pred``."""
    return [(ci, p) for ci, (_, args) in enumerate(ctx.calls) for p, v in args.items() if pred(v, ctx.spec(ci, p))]


def _set(ctx: _Ctx, site: Site, value: Any) -> list[Call]:
    calls = copy.deepcopy(ctx.calls)
    calls[site[0]][1][site[1]] = value
    return calls


def _edit_site(ctx: _Ctx, rng: random.Random, pred: Pred, options: Options) -> Edit | None:
    """Pick an argument where ``pred`` holds and ``options`` offers a changed value; set one at random."""
    probe = random.Random(0)  # applicability only: the row's own generator is not disturbed
    sites = [s for s in _sites(ctx, pred) if options(ctx.calls[s[0]][1][s[1]], ctx, probe)]
    if not sites:
        return None
    site = rng.choice(sites)
    old = ctx.calls[site[0]][1][site[1]]
    new = rng.choice(options(old, ctx, rng))
    return _set(ctx, site, new), f"{ctx.calls[site[0]][0]}.{site[1]}: {_key(old)[:60]} -> {_key(new)[:60]}"


def _str_pred(v: Any, _: dict[str, Any]) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _other_word(ctx: _Ctx, rng: random.Random, exclude: str) -> str:
    """A word (letters only, 3+ long) of another row's string that ``exclude`` does not hold."""
    taken = {w.lower() for w in re.findall(r"\w+", exclude)}
    for _ in range(50 if ctx.pool else 0):
        words = [w for w in rng.choice(ctx.pool).split() if w.isalpha() and len(w) >= 3]
        if words:
            word = rng.choice(words)
            if word.lower() not in taken:
                return word
    return rng.choice([w for w in _FALLBACK_WORDS if w not in taken] or ["zebra"])


def _other_string(ctx: _Ctx, rng: random.Random, exclude: str) -> str:
    """Another row's string value that differs from ``exclude`` (letters and digits, any case)."""
    for _ in range(50 if ctx.pool else 0):
        s = rng.choice(ctx.pool)
        if _norm(s) != _norm(exclude):
            return s
    return rng.choice([w for w in _FALLBACK_WORDS if _norm(w) != _norm(exclude)])


def _changed(options: Iterable[Any], old: Any) -> list[Any]:
    """The distinct ``options`` that differ from ``old`` (type-strictly)."""
    out: dict[str, Any] = {}
    for o in options:
        out.setdefault(_key(o), o)
    return [o for k, o in out.items() if k != _key(old)]


def _date_variants(s: str, shift: bool) -> list[str]:
    """Equivalent rewrites (``shift=False``) or a +1 day / +1 hour shift of an ISO date/time string."""
    m = _DATETIME_RE.fullmatch(s)
    if m:
        y, mo, d, sep, hh, mm, sec, rest = m.groups()
        try:
            stamp = dt.datetime(int(y), int(mo), int(d), int(hh), int(mm), int(sec[1:]) if sec else 0)
        except ValueError:
            return []
        if shift:
            fmt = f"%Y-%m-%d{sep}%H:%M" + (":%S" if sec else "")
            return [(stamp + delta).strftime(fmt) + rest for delta in (dt.timedelta(days=1), dt.timedelta(hours=1))]
        head = f"{y}-{mo}-{d}"
        out = [f"{head}{'T' if sep == ' ' else ' '}{hh}:{mm}{sec or ''}{rest}"]
        if sec == ":00":
            out.append(f"{head}{sep}{hh}:{mm}{rest}")
        elif not sec:
            out.append(f"{head}{sep}{hh}:{mm}:00{rest}")
        return out
    m = _DATE_RE.fullmatch(s)
    if m:
        y, mo, d = m.groups()
        try:
            day = dt.date(int(y), int(mo), int(d))
        except ValueError:
            return []
        return [(day + dt.timedelta(days=1)).isoformat()] if shift else [f"{y}/{mo}/{d}"]
    m = _TIME_RE.fullmatch(s)
    if m:
        hh, mm, sec = m.groups()
        if int(hh) > 23 or int(mm) > 59:
            return []
        if shift:
            return [f"{(int(hh) + 1) % 24:02d}:{mm}{sec or ''}"]
        return [f"{hh}:{mm}"] if sec == ":00" else [f"{hh}:{mm}:00"] if not sec else []
    return []


# ---------------------------------------------------------------------------------- equivalent-looking kinds


def _exact(ctx: _Ctx, rng: random.Random) -> Edit | None:
    return copy.deepcopy(ctx.calls), ""


def _reorder_args(ctx: _Ctx, rng: random.Random) -> Edit | None:
    options = [ci for ci, (_, args) in enumerate(ctx.calls) if len(args) >= 2]
    if not options:
        return None
    ci = rng.choice(options)
    keys = list(ctx.calls[ci][1])
    order = rng.sample(keys, len(keys))
    order = order if order != keys else keys[::-1]
    calls = copy.deepcopy(ctx.calls)
    calls[ci] = (calls[ci][0], {k: calls[ci][1][k] for k in order})
    return calls, f"{calls[ci][0]}: {order}"


def _python_syntax(ctx: _Ctx, rng: random.Random) -> Edit | None:
    return (copy.deepcopy(ctx.calls), "python") if render_python(ctx.calls) is not None else None


def _choose(ctx: _Ctx, rng: random.Random, options: dict[Site, list[Any]]) -> Edit | None:
    """Set one of the arguments in ``options`` to one of its values, both at random."""
    if not options:
        return None
    site = rng.choice(list(options))
    new = rng.choice(options[site])
    return _set(ctx, site, new), f"{ctx.calls[site[0]][0]}.{site[1]} -> {_key(new)[:60]}"


def _plain_value(v: Any) -> bool:
    """A literal acceptable value (not BFCL's ``{key: [values]}`` form for dict parameters)."""
    return not isinstance(v, dict) and not (isinstance(v, list) and any(isinstance(x, dict) for x in v))


def _alt_value(ctx: _Ctx, rng: random.Random) -> Edit | None:
    options: dict[Site, list[Any]] = {}
    for ci, (_, args) in enumerate(ctx.calls):
        answer = ctx.acceptable[ci] or {}
        for p, v in args.items():
            values = answer.get(p)
            if isinstance(values, list):
                alts = _changed((x for x in values if x != "" and _plain_value(x)), v)
                if alts:
                    options[(ci, p)] = alts
    return _choose(ctx, rng, options)


def _drop_arg(ctx: _Ctx, rng: random.Random, required: bool) -> Edit | None:
    """Drop an argument the tool's schema requires (``required``) or one it declares optional."""
    known = [(ci, p, p in ctx.required(n)) for ci, (n, a) in enumerate(ctx.calls) if n in ctx.tools for p in a]
    sites = [(ci, p) for ci, p, is_required in known if is_required == required]
    if not sites:
        return None
    ci, p = rng.choice(sites)
    calls = copy.deepcopy(ctx.calls)
    del calls[ci][1][p]
    return calls, f"{calls[ci][0]}: without {p}"


_PLACEHOLDERS = {"string": "", "integer": 0, "number": 0.0, "boolean": False, "array": [], "object": {}}


def _add_default(ctx: _Ctx, rng: random.Random) -> Edit | None:
    with_default, without = [], []
    for ci, (n, args) in enumerate(ctx.calls):
        for p, spec in ctx.props(n).items():
            if p in args or p in ctx.required(n) or not isinstance(spec, dict):
                continue
            if "default" in spec:
                with_default.append((ci, p, spec["default"], "default"))
            else:
                typ = next((t for t in schema_types(spec) if t in _PLACEHOLDERS), None)
                if typ is not None:
                    without.append((ci, p, _PLACEHOLDERS[typ], "placeholder"))
    options = with_default or without
    if not options:
        return None
    ci, p, value, how = rng.choice(options)
    return _set(ctx, (ci, p), copy.deepcopy(value)), f"{ctx.calls[ci][0]}: + {p}={_key(value)[:60]} ({how})"


def _int_for_float(ctx: _Ctx, rng: random.Random) -> Edit | None:
    """An integral float written as an int (``200.0`` -> ``200``), or an int for a ``number`` written as a float."""
    integral = _edit_site(
        ctx, rng, lambda v, _: isinstance(v, float) and v.is_integer() and abs(v) < 1e15, lambda v, c, r: [int(v)]
    )
    ints = _edit_site(
        ctx, rng, lambda v, spec: _is_int(v) and "number" in schema_types(spec), lambda v, c, r: [float(v)]
    )
    found = [e for e in (integral, ints) if e is not None]
    return rng.choice(found) if found else None


def _space_options(s: str) -> list[str]:
    out = [f" {s} "]
    inner = [m.start() for m in re.finditer(" ", s.strip())]
    if inner:
        i = s.index(s.strip()) + inner[len(inner) // 2]
        out.append(s[:i] + " " + s[i:])
    return out


def _punct_options(s: str) -> list[str]:
    stripped = "".join(ch for ch in s if ch not in string.punctuation)
    return ([stripped] if stripped != s and stripped.strip() else []) + ([] if s.endswith(".") else [s + "."])


def _call_reorder(ctx: _Ctx, rng: random.Random) -> Edit | None:
    reordered = copy.deepcopy(ctx.calls[::-1])
    return (reordered, "reversed") if len(ctx.calls) >= 2 and _key(reordered) != _key(ctx.calls) else None


# ---------------------------------------------------------------------------------- near-miss kinds


def _other_tool(ctx: _Ctx, rng: random.Random, name: str) -> str:
    others = sorted(n for n in ctx.tools if n != name)
    return rng.choice(others) if others else f"{name}_v2"


def _wrong_function(ctx: _Ctx, rng: random.Random) -> Edit | None:
    ci = rng.randrange(len(ctx.calls))
    calls, name = copy.deepcopy(ctx.calls), _other_tool(ctx, rng, ctx.calls[ci][0])
    calls[ci] = (name, calls[ci][1])
    return calls, f"{ctx.calls[ci][0]} -> {name}"


def _extra_arg(ctx: _Ctx, rng: random.Random) -> Edit | None:
    ci = rng.randrange(len(ctx.calls))
    name, args = ctx.calls[ci]
    extra = next((x for x in _EXTRA_ARG_NAMES if x not in ctx.props(name) and x not in args), None)
    if extra is None:
        return None
    return _set(ctx, (ci, extra), True), f"{name}: + {extra}=true"


def _number_options(v: Any) -> list[Any]:
    out = [v + 1, v * 10] + ([v + 0.5] if isinstance(v, float) else [])
    return _changed(out, v)


def _string_word_swap(ctx: _Ctx, rng: random.Random) -> Edit | None:
    def options(s: str) -> list[str]:
        tokens = re.split(r"(\s+)", s)
        words = [i for i, t in enumerate(tokens) if t and not t.isspace()]
        if len(words) < 2:
            return []
        i = rng.choice(words)
        tokens[i] = _other_word(ctx, rng, s)
        return ["".join(tokens)]

    sites = [s for s in _sites(ctx, _str_pred) if len(ctx.calls[s[0]][1][s[1]].split()) >= 2]
    if not sites:
        return None
    site = rng.choice(sites)
    new = options(ctx.calls[site[0]][1][site[1]])[0]
    return _set(ctx, site, new), f"{ctx.calls[site[0]][0]}.{site[1]} -> {new[:60]!r}"


def _string_other(ctx: _Ctx, rng: random.Random) -> Edit | None:
    sites = _sites(ctx, _str_pred)
    if not sites:
        return None
    site = rng.choice(sites)
    old = ctx.calls[site[0]][1][site[1]]
    same_row = [x for x in dict.fromkeys(_strings([a for _, a in ctx.calls])) if x.strip() and _norm(x) != _norm(old)]
    new = rng.choice(same_row) if same_row else _other_string(ctx, rng, old)
    return _set(ctx, site, new), f"{ctx.calls[site[0]][0]}.{site[1]} -> {new[:60]!r}"


def _truncate_options(s: str) -> list[str]:
    if len(s.split()) >= 2:
        return [s.rstrip().rsplit(None, 1)[0]]
    return [s.strip()[:-3]] if len(s.strip()) > 3 else []


def _enum_other(ctx: _Ctx, rng: random.Random) -> Edit | None:
    options: dict[Site, list[Any]] = {}
    for ci, (_, args) in enumerate(ctx.calls):
        for p, v in args.items():
            enum = ctx.spec(ci, p).get("enum")
            if isinstance(enum, list) and _changed(enum, v):
                options[(ci, p)] = _changed(enum, v)
    return _choose(ctx, rng, options)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    elif path and (isinstance(value, (str, bool)) or _is_number(value)):
        yield path


def _nested_change(ctx: _Ctx, rng: random.Random) -> Edit | None:
    def nested(v: Any, _: dict[str, Any]) -> bool:
        return isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v))

    sites = [(s, path) for s in _sites(ctx, nested) for path in _leaves(ctx.calls[s[0]][1][s[1]])]
    if not sites:
        return None
    (ci, p), path = rng.choice(sites)
    calls = copy.deepcopy(ctx.calls)
    parent = calls[ci][1][p]
    for step in path[:-1]:
        parent = parent[step]
    old = parent[path[-1]]
    if isinstance(old, bool):
        new: Any = not old
    elif isinstance(old, str):
        new = _other_word(ctx, rng, old)
    else:
        new = old + 1
    parent[path[-1]] = new
    return calls, f"{calls[ci][0]}.{p}{list(path)}: {_key(old)[:40]} -> {_key(new)[:40]}"


def _duplicate_call(ctx: _Ctx, rng: random.Random) -> Edit | None:
    ci = rng.randrange(len(ctx.calls))
    calls = copy.deepcopy(ctx.calls)
    calls.insert(ci + 1, copy.deepcopy(calls[ci]))
    return calls, f"{calls[ci][0]} twice"


def _drop_call(ctx: _Ctx, rng: random.Random) -> Edit | None:
    if len(ctx.calls) < 2:
        return None
    ci = rng.randrange(len(ctx.calls))
    return copy.deepcopy(ctx.calls[:ci] + ctx.calls[ci + 1 :]), f"without call {ci} ({ctx.calls[ci][0]})"


def _surplus_call(ctx: _Ctx, rng: random.Random) -> Edit | None:
    ci = rng.randrange(len(ctx.calls))
    calls = copy.deepcopy(ctx.calls)
    name = _other_tool(ctx, rng, calls[ci][0])
    calls.append((name, copy.deepcopy(calls[ci][1])))
    return calls, f"+ {name} with {calls[ci][0]}'s arguments"


def _pad_options(s: str, ctx: _Ctx, rng: random.Random) -> list[str]:
    words = " ".join(_other_word(ctx, rng, s) for _ in range(2))
    return [f"{s} {s.strip()}", f"{s} and also {words}"]


def _drop_one(v: list[Any], ctx: _Ctx, rng: random.Random) -> list[Any]:
    i = rng.randrange(len(v)) if len(v) >= 2 else 0
    return [v[:i] + v[i + 1 :]] if len(v) >= 2 else []


def _dup_one(v: list[Any], ctx: _Ctx, rng: random.Random) -> list[Any]:
    i = rng.randrange(len(v)) if v else 0
    return [v[: i + 1] + [copy.deepcopy(v[i])] + v[i + 1 :]] if v else []


# Kinds that set one top-level argument to one of the options its value offers.
_SITE_EDITS: dict[str, tuple[Pred, Options]] = {
    "float_for_int": (
        lambda v, spec: _is_int(v) and "number" not in schema_types(spec),
        lambda v, c, r: [float(v)] if abs(v) < 2**53 else [],
    ),
    "string_case": (_str_pred, lambda s, c, r: _changed([s.lower(), s.upper(), s.title()], s)),
    "string_space": (_str_pred, lambda s, c, r: _space_options(s)),
    "string_punct": (_str_pred, lambda s, c, r: _punct_options(s)),
    "date_format": (_str_pred, lambda s, c, r: _date_variants(s, shift=False)),
    "list_reorder": (lambda v, _: isinstance(v, list), lambda v, c, r: _changed([v[::-1]], v) if len(v) >= 2 else []),
    "number_change": (lambda v, _: _is_number(v), lambda v, c, r: _number_options(v)),
    "number_as_string": (lambda v, _: _is_number(v), lambda v, c, r: [str(v)]),
    "string_pad": (_str_pred, _pad_options),
    "string_truncate": (_str_pred, lambda s, c, r: _truncate_options(s)),
    "date_shift": (_str_pred, lambda s, c, r: _date_variants(s, shift=True)),
    "bool_flip": (lambda v, _: isinstance(v, bool), lambda v, c, r: [not v]),
    "list_drop": (lambda v, _: isinstance(v, list), _drop_one),
    "list_dup": (lambda v, _: isinstance(v, list), _dup_one),
    "huge_argument": (_str_pred, lambda s, c, r: [" ".join([s] * HUGE_COPIES)]),
    "deep_nesting": (
        lambda v, _: True,
        lambda v, c, r: [json.loads("[" * DEEP_LEVELS + json.dumps(v) + "]" * DEEP_LEVELS)],
    ),
}


# Every other kind is the function ``_<kind>``.
_KIND_FUNCS: dict[str, Callable[[_Ctx, random.Random], Edit | None]] = {
    **{k: globals()[f"_{k}"] for k in ALL_KINDS if k not in _SITE_EDITS and f"_{k}" in globals()},
    **{k: functools.partial(_edit_site, pred=p, options=o) for k, (p, o) in _SITE_EDITS.items()},
    "omit_optional": functools.partial(_drop_arg, required=False),
    "drop_required": functools.partial(_drop_arg, required=True),
}
assert set(_KIND_FUNCS) == set(ALL_KINDS)


def candidates(
    row: dict[str, Any],
    rng: random.Random,
    *,
    kinds: Sequence[str] = ALL_KINDS,
    other_strings: Sequence[str] = (),
) -> list[Candidate]:
    """One candidate per applicable kind in ``kinds`` (in that order) for the row's expected call(s).

    ``other_strings`` are string values from other rows (``row_strings``), used by the kinds that
    borrow words or values from elsewhere (``string_word_swap``, ``string_other``, ``string_pad``,
    ``nested_change``); a small built-in word list stands in when it is empty.
    """
    unknown = [k for k in kinds if k not in _KIND_FUNCS]
    if unknown:
        raise ValueError(f"unknown candidate kinds {unknown}; choices: {list(ALL_KINDS)}")
    calls, acceptable = expected_calls(row)
    ctx = _Ctx(calls, acceptable, PivotRow(row).tool_parameters(), other_strings)
    base = rng.getrandbits(64)
    out = []
    for kind in kinds:
        edit = _KIND_FUNCS[kind](ctx, random.Random(f"{base}:{kind}"))
        if edit is None:
            continue
        new_calls, note = edit
        text = render_python(new_calls) if kind == "python_syntax" else render_tool_calls(new_calls)
        out.append(Candidate(kind, text or "", new_calls, note))
    return out
