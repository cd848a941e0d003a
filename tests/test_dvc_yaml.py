"""dvc.yaml names, for each stage, exactly the code that can change the stage's outputs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "betavae"
# Imported by stages, but unable to change what a stage writes; listing them would rerun the
# hour of training for a reworded error message.
NOT_DEPENDENCIES = {
    "betavae/cli.py": "turns exceptions into one-line messages and exit codes",
    "betavae/atomic.py": "decides how bytes reach the disk, not which bytes",
    "betavae/params.py": "validates params.yaml, whose values dvc.yaml tracks key by key "
                         "(the committed file sets every key, so no default is used)",
}


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _script(stage: dict) -> str:
    words = stage["cmd"].split()
    return words[words.index("-m") + 1].replace(".", "/") + ".py"


def _package_imports(path: str) -> set[str]:
    """Package modules `path` imports at run time (imports under `if TYPE_CHECKING:` are annotations only)."""
    found = set()
    for node in _runtime_nodes(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            if node.module == PACKAGE:
                found |= {f"{PACKAGE}/{alias.name}.py" for alias in node.names}
            else:
                found.add(node.module.replace(".", "/") + ".py")
        elif isinstance(node, ast.Import):
            found |= {a.name.replace(".", "/") + ".py" for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def _runtime_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        yield from _runtime_nodes(node)


def _code_closure(script: str) -> set[str]:
    seen, todo = {script}, [script]
    while todo:
        for module in _package_imports(todo.pop()) - seen:
            seen.add(module)
            if module not in NOT_DEPENDENCIES:
                todo.append(module)
    return seen - set(NOT_DEPENDENCIES)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_lists_exactly_the_code_it_runs(name):
    stage = _stages()[name]
    listed = {dep for dep in stage["deps"] if dep.endswith(".py")}
    needed = _code_closure(_script(stage))
    assert listed - needed == set(), f"{name}: listed but never imported"
    assert needed - listed == set(), f"{name}: imported but not a dependency"


def test_closure_follows_imports_and_skips_annotation_only_ones():
    # images.py imports the model only for a type annotation; figures.py imports it for real
    assert "betavae/model.py" not in _code_closure("betavae/images.py")
    assert "betavae/model.py" in _code_closure("betavae/figures.py")
    assert "betavae/idx.py" in _code_closure("betavae/data.py")
