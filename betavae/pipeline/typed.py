"""Plain data read from a file (YAML's dicts, lists and scalars) into a typed, frozen dataclass:
unknown keys, missing groups and wrong types refused with one line that names the key. The schema's
own rules (ranges, choices) are the caller's; params.yaml is built here (betavae/pipeline/params.py)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing


def build(cls, raw: object, source: str, error: type[Exception], prefix: str = ""):
    """An instance of the frozen dataclass cls from a mapping: every key a field, every value of the
    field's type (int, float, bool, str, or a nested dataclass); fields left out keep their defaults.
    Floats accept ints; bool is never an int."""
    return _build(cls, raw, prefix, source, error)


def _build(cls, raw: object, prefix: str, source: str, error: type[Exception]):
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "top level"
        raise error(f"{source}: {where} must be a mapping of keys, got {short(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise error(f"{source}: unknown key {prefix}{short(key, quote=False)}"
                              f"{_suggest(str(key), fields, prefix)}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}.", source, error)
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}", source, error)
    return cls(**values)


def _coerce(value: object, kind: type, key: str, source: str, error: type[Exception]):
    # bool is an int in Python; a YAML `true` must never pass as an epoch count.
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        raise error(f"{source}: {key} must be {kind.__name__}, got {short(value)}")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            value = math.inf
        if not math.isfinite(value):
            raise error(f"{source}: {key} must be a finite number, got {short(value)}")
    return value


def short(value: object, quote: bool = True) -> str:
    text = repr(value) if quote or not isinstance(value, str) else value
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= 60 else f"{text[:57]}..."


def _suggest(key: str, fields: typing.Iterable[str], prefix: str) -> str:
    names = [f"{prefix}{name}" for name in fields]
    close = difflib.get_close_matches(f"{prefix}{key}", names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(names)})"
