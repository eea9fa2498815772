"""One validation layer for every config file: YAML data -> a config dataclass, or a one-line ``ConfigError``.

Config classes stay plain dataclasses (the code that uses them reads attributes and nothing else); what a value
may be is declared once, on the field: its type, and a range as ``Annotated[int, Field(ge=1)]``. Cross-field rules
stay in the class's ``__post_init__`` (or the config module's ``validate``), where they are declared once too.
:func:`parse_config` checks a whole document against that with pydantic, the same way for every file:

- strict types: ``"no"`` is not a boolean, ``"abc"`` is not an integer, ``3.5`` is not an integer; numbers must
  be finite (``.nan`` and ``.inf`` are refused); lists are accepted where the field is a tuple (YAML has no tuples);
- unknown keys are an error (a typo never silently falls back to a default);
- the error names the file, the key path and what is allowed, on one line, so the CLI prints it as is.

Why a JSON round trip: pydantic's strict JSON mode accepts exactly what YAML can express (lists for tuples,
integers for floats) and nothing else, so no lax string-to-number or string-to-boolean coercion can creep in.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any, TypeVar

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from rlserve.errors import ConfigError

T = TypeVar("T")

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
"""The rules every config dataclass is validated with."""


def _configure(cls: Any) -> None:
    """Give ``cls`` and every dataclass reachable from its fields the :data:`STRICT` pydantic config."""
    if not dataclasses.is_dataclass(cls) or "__pydantic_config__" in cls.__dict__:
        return
    cls.__pydantic_config__ = STRICT  # type: ignore[union-attr]
    stack = list(typing.get_type_hints(cls).values())
    while stack:
        tp = stack.pop()
        if isinstance(tp, type):
            _configure(tp)
        stack.extend(typing.get_args(tp))


@functools.cache
def _adapter(cls: type[T]) -> TypeAdapter[T]:
    _configure(cls)
    return TypeAdapter(cls)


def _allowed(cls: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the dataclass found at ``loc`` inside ``cls`` (empty when there is none)."""
    for key in loc:
        if not dataclasses.is_dataclass(cls):
            return []
        tp = typing.get_type_hints(cls).get(str(key))
        candidates = [tp, *typing.get_args(tp)] if tp is not None else []
        cls = next((c for c in candidates if dataclasses.is_dataclass(c)), None)
    return sorted(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []


def describe(exc: ValidationError, cls: Any, source: str) -> str:
    """The first problem of ``exc`` as ``source: key.path: what is wrong (got X; allowed ...)`` on one line."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[") or "(top)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if err["type"] == "unexpected_keyword_argument":
        known = _allowed(cls, loc[:-1])
        return f"{source}: unknown key {path!r}; allowed: {', '.join(known)}{more}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    if err["type"] in ("missing", "missing_argument"):
        return f"{source}: {path}: required key is missing{more}"
    if err["type"] == "value_error":  # a rule of the class itself: its message already says what is allowed
        return f"{source}: {msg}{more}" if not loc else f"{source}: {path}: {msg}{more}"
    return f"{source}: {path}: {msg[0].lower() + msg[1:]}, got {got}{more}"


def parse_config(cls: type[T], data: Any, source: str) -> T:
    """Validate ``data`` (a parsed YAML document or section) as ``cls``; ``source`` names it in errors.

    Raises:
        ConfigError: one line naming ``source``, the key and what is allowed.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    _check_size(data, source)
    try:
        text = json.dumps(data, allow_nan=True, default=_not_plain)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return _adapter(cls).validate_json(text)  # type: ignore[arg-type]  # classes are hashable
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, source)) from None


MAX_VALUES = 100_000
"""Values a config document may hold once YAML aliases are expanded (real configs hold a few hundred)."""


def _check_size(data: Any, source: str) -> None:
    """Refuse a document that expands to more than :data:`MAX_VALUES` values (a YAML alias bomb: a few lines
    whose aliases nest into billions of values), counting at most that many before giving up."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{source}: the document expands to more than {MAX_VALUES:,} values (YAML aliases "
                              "nested into each other?); write the values out")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def _not_plain(value: Any) -> Any:
    if isinstance(value, np.generic):  # a number a caller computed with numpy (a sampled workload): its Python value
        return value.item()
    raise TypeError(f"value {str(value)[:60]!r} of type {type(value).__name__} is not a plain YAML scalar, list or "
                    "mapping (dates and tagged values are not config values)")
