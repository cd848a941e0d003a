"""The package's shape: its folders are layers, each importing only from those below it (the order
betavae/__init__.py gives), no module imports itself through others, no module shares a name with a
stage or a script, and importing any module changes nothing in the process."""

import ast
import subprocess
import sys

import pytest

from betavae.compat import code_dependencies as dependencies

LAYERS = ("errors.py", "speed", "core", "pipeline", "compat", "training", "uses", "experiments")  # bottom first


def _modules(repo_root) -> list[str]:
    return sorted(path.relative_to(repo_root).as_posix() for path in (repo_root / "betavae").rglob("*.py")
                  if path.name != "__init__.py")


def _layer(module: str) -> int:
    return LAYERS.index(module.split("/")[1])


def test_the_layers_are_the_packages_folders_and_the_docstring_names_them(repo_root):
    found = {path.name for path in (repo_root / "betavae").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert found == set(LAYERS) - {"errors.py"}
    described = (repo_root / "betavae" / "__init__.py").read_text()
    assert [described.index(f"\n    {layer}") for layer in LAYERS] == sorted(
        described.index(f"\n    {layer}") for layer in LAYERS)


def test_every_module_imports_only_from_its_own_layer_or_those_below(repo_root):
    """Type annotations included: an import up a layer means the code belongs lower, or the fact higher."""
    upward = [f"{module} -> {imported}" for module in _modules(repo_root)
              for imported in dependencies.imports(module, annotations=True)
              if _layer(imported) > _layer(module)]
    assert upward == []


def test_no_module_of_the_package_imports_itself_through_others(repo_root):
    """Not even for type annotations: a circle means two modules share something that belongs in a third."""
    graph = {module: dependencies.imports(module, annotations=True) for module in _modules(repo_root)}

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


def test_no_module_shares_a_name_with_a_stage_or_a_script(repo_root):
    names = {path.stem for path in (repo_root / "betavae").rglob("*.py")}
    entry_points = {path.stem for folder in ("stages", "scripts") for path in (repo_root / folder).glob("[a-z]*.py")}
    assert names & entry_points == set()


@pytest.mark.parametrize("stage", ["check_params", "download", "train", "evaluate", "plot", "export"])
def test_a_stage_script_stays_thin(stage, repo_root):
    """Read params, call the package, write outputs: a stage's logic lives in the package."""
    lines = (repo_root / "stages" / f"{stage}.py").read_text().splitlines()
    assert len(lines) <= 100, f"stages/{stage}.py has {len(lines)} lines"


def _loose_arguments(source: str) -> list[str]:
    """Command-line parsing that bypasses betavae.errors: argparse's own parser (a multi-line usage error)
    or an unbounded number type (`type=int`, `type=float`), each named with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        if ast.unparse(node.func) == "argparse.ArgumentParser":
            found.append(f"line {node.lineno}: argparse.ArgumentParser")
        found += [f"line {node.lineno}: type={ast.unparse(keyword.value)}" for keyword in node.keywords
                  if keyword.arg == "type" and ast.unparse(keyword.value) in ("int", "float")]
    return found


def test_every_command_line_is_read_by_the_projects_parser_with_bounded_numbers(repo_root):
    """One reader of command lines (betavae.errors: ArgumentParser, integer_in, output_file) for every entry
    point, so that a bad argument is one line naming it, and a number or an output is checked before work."""
    folders = ("stages", "scripts", "benchmarks", "betavae")
    files = [path for folder in folders for path in (repo_root / folder).rglob("*.py")
             if path != repo_root / "betavae" / "errors.py"]
    loose = {path.relative_to(repo_root).as_posix(): found for path in files
             if (found := _loose_arguments(path.read_text()))}
    assert loose == {}
    assert _loose_arguments("import argparse\np = argparse.ArgumentParser()\np.add_argument('-n', type=int)") == [
        "line 2: argparse.ArgumentParser", "line 3: type=int"]  # the rule sees what it forbids


def test_every_table_is_written_by_the_one_csv_writer(repo_root):
    """atomic.csv_text is the one place a CSV's dialect (quoting, line ends) is chosen."""
    writers = [f"{path.relative_to(repo_root)}:{number}" for folder in ("stages", "scripts", "benchmarks", "betavae")
               for path in (repo_root / folder).rglob("*.py") if path.name != "atomic.py"
               for number, line in enumerate(path.read_text().splitlines(), start=1)
               if "csv.writer(" in line or "csv.DictWriter(" in line or ".to_csv(" in line]
    assert writers == []


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


def test_the_params_schema_stays_one_job_in_a_page_or_so(repo_root):
    """Reading YAML, building typed objects and parsing command-line assignments live beside it."""
    assert len((repo_root / "betavae" / "pipeline" / "params.py").read_text().splitlines()) <= 235
