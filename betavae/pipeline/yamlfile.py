"""YAML files, read as DVC reads params.yaml (YAML 1.2, ruamel.yaml's safe loader) and bounded: the one
reader of every YAML text the project reads (params.yaml, search spaces, `-S` values, the committed
params of an experiment).

DVC parses params files with ruamel.yaml, `typ="safe"` (dvc.utils.serialize.parse_yaml), so what
`dvc exp run -S weight_decay=1e-6` writes, what dvc.lock records and what a stage reads are the same
values; PyYAML reads YAML 1.1, where `1e-6` is a string. The safe loader builds only plain data (no
tags that name code). What it does not bound, this module does, before anything is built:
- size: at most MAX_BYTES of text;
- nesting: at most MAX_DEPTH collections inside one another (a flow `[[[[...` is refused from the
  text, before parsing, as the parser's recursion would take seconds to fail);
- expansion: an alias stands for a copy of its anchor, so a few lines of anchors can stand for
  billions of values (the "billion laughs"); the document, counted with every alias expanded, must
  hold at most MAX_NODES values, and no alias may contain itself.
Every failure is a YamlError: one line naming the file and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

from betavae.core import files
from betavae.errors import BetaVAEError, one_line

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


class YamlError(BetaVAEError, ValueError):
    """A YAML file that cannot be read, is not YAML, or exceeds the bounds; the message names it."""


def read(path: str | Path) -> object:
    """The YAML file at path as plain data (dicts, lists, str, int, float, bool, None, dates)."""
    path = Path(path)
    data = files.read_bytes(path, MAX_BYTES, "a settings file", YamlError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise YamlError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return parse(text, str(path))


def parse(text: str, source: str) -> object:
    """YAML text as plain data; `source` names it in errors."""
    from ruamel.yaml import YAML  # imported by the readers only

    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlError(f"{source}: larger than {files.size_text(MAX_BYTES)}, too large for a settings file")
    depth = _flow_depth(text)
    if depth > MAX_DEPTH:
        raise YamlError(f"{source}: nested more than {MAX_DEPTH} levels deep")
    loader = YAML(typ="safe")
    try:
        node = loader.compose(text)
        _check_expansion(node, source)
        return loader.load(text)
    except YamlError:
        raise
    except RecursionError:
        raise YamlError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except Exception as error:  # ruamel's YAMLError, and the odd ValueError or TypeError of a malformed value
        raise YamlError(f"{source}: not valid YAML {_where_and_what(error)}") from None


def _where_and_what(error: Exception) -> str:
    """The parser's own words, without its quotation of the text around the fault (which spans lines and
    draws a caret): `at line 3, column 7: found duplicate key "beta" ...`."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if not problem:
        return f"({one_line(error)[:300]})"
    context = getattr(error, "context", None)
    if context and problem.startswith("but "):  # "expected a single document ... but found another document"
        problem = f"{context} {problem}"
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{one_line(problem)[:300]}"


def _check_expansion(root, source: str) -> None:
    """Count the values the document expands to, every alias a copy, without expanding it."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    active: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            depths[key] = 1 + max((depths[id(child)] for child in children), default=0)
            active.discard(key)
            if sizes[key] > MAX_NODES:
                raise YamlError(f"{source}: its aliases expand to more than {MAX_NODES:,} values")
            if depths[key] > MAX_DEPTH:
                raise YamlError(f"{source}: nested more than {MAX_DEPTH} levels deep")
            continue
        if key in sizes:
            continue
        if key in active:
            raise YamlError(f"{source}: an alias refers to a collection that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node) -> list:
    value = node.value
    if not isinstance(value, list):
        return []
    return [part for item in value for part in (item if isinstance(item, tuple) else (item,))]


def _flow_depth(text: str) -> int:
    """The deepest nesting of [ and { outside quotes and comments: a quick upper look, before parsing."""
    depth = deepest = 0
    quote = None
    previous = "\n"
    for char in text:
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and previous in " \t\n":
            quote = "\n"  # a comment runs to the end of the line
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char
    return deepest
