"""The package's shape: no import circle, and importing any module changes nothing in the process."""

import subprocess
import sys

from betavae.compat import code_dependencies


def _modules(repo_root) -> list[str]:
    return sorted(path.relative_to(repo_root).as_posix() for path in (repo_root / "betavae").glob("*.py"))


def test_no_module_of_the_package_imports_itself_through_others(repo_root):
    """Not even for type annotations: a circle means two modules share something that belongs in a third."""
    graph = {module: code_dependencies.imports(module, annotations=True) for module in _modules(repo_root)}

    def circle_from(start: str, path: list[str]) -> list[str] | None:
        for module in sorted(graph.get(path[-1], ())):
            if module == start:
                return [*path, module]
            if module not in path:
                found = circle_from(start, [*path, module])
                if found:
                    return found
        return None

    for module in graph:
        circle = circle_from(module, [module])
        assert circle is None, " -> ".join(circle)


IMPORT_EVERYTHING = """
import importlib, sys, torch
state = (torch.are_deterministic_algorithms_enabled(), torch.initial_seed(), torch.get_num_threads())
for name in sys.argv[1:]:
    importlib.import_module(name)
after = (torch.are_deterministic_algorithms_enabled(), torch.initial_seed(), torch.get_num_threads())
assert after == state, (state, after)
print("unchanged")
"""


def test_importing_any_module_has_no_side_effect_on_torch(repo_root):
    names = [module.removesuffix(".py").replace("/", ".") for module in _modules(repo_root)]
    stages = [f"stages.{path.stem}" for path in sorted((repo_root / "stages").glob("[a-z]*.py"))]
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, *names, *stages], cwd=repo_root,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "unchanged", result.stderr[-2000:]
