"""Params given outside params.yaml, one key at a time: `KEY=VALUE` on a command line (the sweep's
--grid and --set), or the `fixed` mapping of a search space. The one place such assignments are
read, strictly: every key names one param of the schema (a leaf such as `beta` or
`augment.rotation`, never a group), every value is one YAML 1.2 scalar of that param's type, no
list holds an empty or repeated item, and the params a run would get pass params.yaml's own
validation before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from betavae.pipeline import dotted, typed, yamlfile
from betavae.pipeline.params import Params, ParamsError, parse_params


def leaves(schema: type = Params, prefix: str = "") -> dict[str, type]:
    """Every param's dotted key and type, in the schema's order: {"seed": int, "augment.rotation": float, ...}."""
    found = {}
    for field in dataclasses.fields(schema):
        kind = typing.get_type_hints(schema)[field.name]
        if dataclasses.is_dataclass(kind):
            found.update(leaves(kind, f"{prefix}{field.name}."))
        else:
            found[f"{prefix}{field.name}"] = kind
    return found


def check_key(key: object, where: str) -> str:
    """key as a param's dotted key, or ParamsError saying why it is not one."""
    known = leaves()
    if isinstance(key, str) and key in known:
        return key
    shown = typed.short(key)
    if isinstance(key, str) and any(name.startswith(f"{key}.") for name in known):
        members = ", ".join(name for name in known if name.startswith(f"{key}."))
        raise ParamsError(f"{where}: {key} is a group of params; name one of them ({members})")
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6) if isinstance(key, str) else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ParamsError(f"{where}: {shown} is not a param of params.yaml{hint}")


def scalar(text: str, key: str, where: str) -> object:
    """One value of a command line, as YAML 1.2 reads it (as `dvc exp run -S` writes it)."""
    if not text.strip():
        raise ParamsError(f"{where}: {key} has an empty value")
    try:
        value = yamlfile.parse(text, f"{where}: {key}")
    except yamlfile.YamlError as error:
        raise ParamsError(str(error)) from None
    if isinstance(value, (dict, list)) or value is None:
        raise ParamsError(f"{where}: {key}={typed.short(text)} is not a single value")
    return value


def assignment(text: str, where: str) -> tuple[str, str]:
    """"KEY=VALUE" -> (key, value text), the key checked; ParamsError for anything else."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"{where}: expected KEY=VALUE, got {typed.short(text)}")
    key = check_key(key, where)
    scalar(value, key, where)
    return key, value


def value_list(text: str, where: str) -> tuple[str, list[str]]:
    """"KEY=V1,V2,..." -> (key, [value texts]): at least one value, none empty, none repeated."""
    key, _, values = text.partition("=")
    key = check_key(key.strip(), where) if "=" in text else check_key(text, where)
    items = values.split(",")
    if not values.strip() or any(not item.strip() for item in items):
        raise ParamsError(f"{where}: {typed.short(text)} has an empty value; write KEY=V1,V2,...")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ParamsError(f"{where}: {key} lists {repeated[0]} twice")
    for item in items:
        scalar(item, key, where)
    return key, items


def fixed_values(mapping: object, where: str, prefix: str = "") -> dict[str, object]:
    """A mapping of params to values (nested by group, or dotted keys) -> {dotted key: value}."""
    if not isinstance(mapping, dict):
        raise ParamsError(f"{where} must be a mapping of params to values; got {typed.short(mapping)}")
    known, found = leaves(), {}
    for key, value in mapping.items():
        name = f"{prefix}{key}" if isinstance(key, str) else key
        if isinstance(value, dict) and isinstance(name, str) and any(leaf.startswith(f"{name}.") for leaf in known):
            found.update(fixed_values(value, where, f"{name}."))
            continue
        name = check_key(name, where)
        if isinstance(value, (dict, list)) or value is None:
            raise ParamsError(f"{where}: {name} must be one value ({known[name].__name__}); got {typed.short(value)}")
        found[name] = value
    return found


def run_params(base: dict, values: dict[str, object], source: str) -> Params:
    """The params of a run: base (params.yaml's mapping) with these dotted values set, validated."""
    flat = dotted.flatten(base)
    for key, value in values.items():
        flat[check_key(key, source)] = value
    return parse_params(dotted.nest(flat), source)
