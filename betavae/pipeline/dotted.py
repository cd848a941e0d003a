"""Dotted keys ("data.limit") into nested mappings: the one way this project names a param inside a
group, used by validation, the checkpoint comparison and the DVC experiment guards."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MISSING = object()  # what `get` returns for a key that is not there


def get(tree: Mapping, key: str, default: object = MISSING) -> object:
    """tree["data"]["limit"] for "data.limit"; `default` where any part is missing."""
    value: object = tree
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def differing(first: Mapping, second: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings, sorted; a key present in one
    only counts as differing."""
    keys = []
    for key in sorted(set(first) | set(second), key=str):
        a, b = first.get(key, MISSING), second.get(key, MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += differing(a, b, f"{prefix}{key}.")
        elif a is MISSING or b is MISSING or a != b:
            keys.append(f"{prefix}{key}")
    return keys


def select(tree: Mapping, keys: Iterable[str]) -> dict:
    """The nested dict of just these keys: a leaf ("data.limit") or a whole group ("augment")."""
    return nest({key: dict(value) if isinstance(value, Mapping) else value
                 for key in keys for value in [get(tree, key)]})


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"data": {"limit": 0}} -> {"data.limit": 0}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def nest(flat: Mapping) -> dict:
    """{"data.limit": 0} -> {"data": {"limit": 0}}, in the order of the keys."""
    tree: dict = {}
    for key, value in flat.items():
        *groups, leaf = str(key).split(".")
        target = tree
        for group in groups:
            target = target.setdefault(group, {})
        target[leaf] = value
    return tree
