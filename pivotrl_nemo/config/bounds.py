"""Field constructors of the typed configuration: ``bounded`` numbers and ``choice`` strings.

The metadata they attach is what ``config.validate.check_fields`` checks, naming the key.
"""

from __future__ import annotations

from dataclasses import field


def bounded[N: float | None](  # N: the field type (an int is a float to the type checker)
    default: N,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    why: str = "",
) -> N:
    """A numeric field whose value must satisfy the given bounds (``None`` values are not
    checked: an Optional field left unset); ``why`` is added to the error message."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta: dict[str, object] = {"bounds": bounds, "why": why}
    return field(default=default, metadata=meta)


def choice(default: str, *choices: str, why: str = "") -> str:
    """A string field that must be one of ``choices``."""
    if default not in choices:
        raise ValueError(f"default {default!r} is not one of {choices}")
    meta: dict[str, object] = {"choices": tuple(choices), "why": why}
    return field(default=default, metadata=meta)
