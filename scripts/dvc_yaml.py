"""Write dvc.yaml's lists that the package owns, so that no fact is typed twice:

    deps     each stage's code: its script and every package module it imports
             (betavae/compat/code_dependencies.py)
    params   each stage's params: the keys whose values change its outputs, from the schema
             (betavae/pipeline/params.py's stage_params)

    python scripts/dvc_yaml.py            # rewrite them in dvc.yaml (`make dvc-yaml`)
    python scripts/dvc_yaml.py --check    # exit 1, naming each stage whose lists differ

Everything else in dvc.yaml (commands, data and model dependencies, outputs, plots, comments) is
written by hand and kept as it is. tests/test_dvc_yaml.py runs the check.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from betavae.compat import code_dependencies
from betavae.errors import ArgumentParser, BetaVAEError, run, say
from betavae.pipeline import atomic
from betavae.pipeline.params import stage_params

DVC_YAML = Path("dvc.yaml")
STAGES_WITH_PARAMS = ("train", "evaluate", "plot", "export")  # check_params lists the whole file


def script_of(stage: dict) -> str:
    """stages/train.py for `python -m stages.train ...`."""
    words = str(stage["cmd"]).split()
    return words[words.index("-m") + 1].replace(".", "/") + ".py"


def expected_lists(stages: dict, root: Path) -> dict[str, dict[str, list]]:
    """{stage: {"deps": [...], "params": [...]}}: the hand-written deps that are not code, then the
    stage's script and the modules it imports, sorted; and the params of stages that read any."""
    found = {}
    for name, stage in stages.items():
        script = script_of(stage)
        code = code_dependencies.closure(script, root)
        other = [dep for dep in stage.get("deps", []) if not str(dep).endswith(".py")]
        lists = {"deps": [*other, script, *sorted(code - {script})]}
        if name in STAGES_WITH_PARAMS:
            lists["params"] = list(stage_params(name))
        found[name] = lists
    return found


def differences(path: Path, root: Path) -> list[str]:
    """One line per stage whose lists differ from the package's."""
    stages = _load(path)["stages"]
    problems = []
    for name, lists in expected_lists(stages, root).items():
        for key, wanted in lists.items():
            have = [str(item) for item in stages[name].get(key, [])]
            if have != [str(item) for item in wanted]:
                missing, extra = sorted(set(map(str, wanted)) - set(have)), sorted(set(have) - set(map(str, wanted)))
                detail = ", ".join([*(f"add {item}" for item in missing), *(f"drop {item}" for item in extra)])
                problems.append(f"{name}.{key}: {detail or 'reorder'}")
    return problems


def rewrite(path: Path, root: Path) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and layout of everything else are kept
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(path.read_text())
    for name, lists in expected_lists(document["stages"], root).items():
        for key, wanted in lists.items():
            current = document["stages"][name][key]
            # ruamel keeps a comment below a list on its last item: carry it to the new last item
            below = current.ca.items.pop(len(current) - 1, None)
            current[:] = wanted
            if below is not None:
                current.ca.items[len(current) - 1] = below
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    atomic.write_text(path, buffer.getvalue())


def _load(path: Path) -> dict:
    from betavae.pipeline import yamlfile

    return yamlfile.read(path)


def main() -> None:
    run(_main, "dvc_yaml")


def _main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say which lists differ")
    parser.add_argument("--dvc-yaml", type=Path, default=DVC_YAML)
    args = parser.parse_args()
    root = args.dvc_yaml.resolve().parent
    problems = differences(args.dvc_yaml, root)
    if args.check:
        if problems:
            raise BetaVAEError(f"{args.dvc_yaml} differs from the package: {'; '.join(problems)} "
                               "(`make dvc-yaml` rewrites it)")
        say(f"dvc_yaml: {args.dvc_yaml} lists what the package says")
        return
    if problems:
        rewrite(args.dvc_yaml, root)
    say(f"dvc_yaml: {args.dvc_yaml} " + (f"rewritten ({'; '.join(problems)})" if problems else "unchanged"))


if __name__ == "__main__":
    main()
