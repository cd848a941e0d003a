"""Which package modules a stage's code runs, found once, from the imports.

dvc.yaml lists exactly these as each stage's code dependencies (tests/test_dvc_yaml.py checks it),
and a training checkpoint records a hash of each module training runs, so an interrupted run is
resumed only by the same code (betavae/training/resume.py). Both ask `closure`, so the two never disagree.

The modules in INERT are imported by every stage but cannot change what a stage writes (the reason
for each is beside it); they are left out, so that rewording a message neither reruns an hour of
training nor discards an interrupted run's checkpoint.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "betavae"
ROOT = Path(__file__).resolve().parents[2]  # the directory that holds the package (and, in a clone, stages/)
INERT = {
    "betavae/errors.py": "how failures are reported, not what is computed",
    "betavae/pipeline/atomic.py": "how bytes reach the disk, not which bytes",
    "betavae/core/files.py": "how a file's bytes are read whole, and which files are refused, not which bytes",
    "betavae/pipeline/params.py": "validation; dvc.yaml tracks each param's value key by key, and the "
                                  "committed params.yaml sets every key, so no default is ever used",
    "betavae/pipeline/yamlfile.py": "how params.yaml is read; the values it gives are what dvc.yaml tracks",
    "betavae/pipeline/typed.py": "how params.yaml's values are checked for type; the values are what dvc.yaml tracks",
    "betavae/compat/dvc_workspace.py": "decides whether a stage may start, not what it writes",
    "betavae/pipeline/launch.py": "starts the processes; how many is the `launcher` param, which dvc.yaml tracks",
    "betavae/compat/code_dependencies.py": "decides which modules a checkpoint is compared on, not what is computed",
    "betavae/uses/explorer.py": "serves the explorer page; its file names are also dvc.yaml's outs, so a "
                           "rename shows there",
}


def closure(script: str, root: Path = ROOT) -> set[str]:
    """`script` and every package module it imports at run time, directly or through others, minus
    INERT (what an inert module imports is followed all the same); paths relative to root, e.g.
    {"stages/train.py", "betavae/training/loop.py", ...}."""
    seen, todo = {script}, [script]
    while todo:
        for module in imports(todo.pop(), root) - seen:
            seen.add(module)
            todo.append(module)
    return seen - set(INERT)


@functools.cache
def code_fingerprint(module: str = "betavae/training/loop.py") -> dict[str, str]:
    """{"betavae/training/loop.py": sha256 of its source, ...} over closure(module): taken once per process,
    at the start of a run, so edits made while it trains are not mistaken for the run's own code."""
    return {name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest() for name in sorted(closure(module))}


def imports(module: str, root: Path = ROOT, annotations: bool = False) -> set[str]:
    """Package modules a file imports at run time (`if TYPE_CHECKING:` imports are annotations
    only, counted with annotations=True)."""
    found = set()
    tree = ast.parse((root / module).read_text())
    for node in ast.walk(tree) if annotations else _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            found |= {_module_file(f"{node.module}.{alias.name}", root) or _module_file(node.module, root)
                      for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {_module_file(a.name, root) for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found - {None}


def _module_file(dotted_name: str, root: Path) -> str | None:
    """The file of a module (betavae.core.model -> betavae/core/model.py), or None for a package or a
    name that is not a module: the packages' __init__.py files hold only their docstrings (and the
    top one a lazy name for the API), no computation."""
    path = dotted_name.replace(".", "/") + ".py"
    return path if (root / path).is_file() else None


def _runtime_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        yield from _runtime_nodes(node)
