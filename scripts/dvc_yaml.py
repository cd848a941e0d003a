"""Write dvc.yaml's lists that the package owns, so that no fact is typed twice:

    deps     each stage's code: its script and every package module it imports
             (betavae/compat/code_dependencies.py)
    params   each stage's params: the keys whose values change its outputs, from the schema
             (betavae/pipeline/params.py's stage_params)

and, from the same schema, docs/design.md's table of what a param reaches: the stages that
`dvc exp run -S KEY=VALUE` reruns (tests/test_param_reach.py holds it against `dvc status`).

    python -m scripts.dvc_yaml            # rewrite them in dvc.yaml and docs/design.md (`make dvc-yaml`)
    python -m scripts.dvc_yaml --check    # exit 1, naming each stage whose lists differ

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
from betavae.pipeline.params import Params, stage_params
from scripts.readme_results import fill  # the one way a generated block is written into a Markdown file

DVC_YAML = Path("dvc.yaml")
DESIGN = Path("docs/design.md")  # holds the param-reach table
REACH_BLOCK = "param-reach"
STAGES_WITH_PARAMS = ("train", "evaluate", "plot", "export")  # check_params lists the whole file
CHECK_STAGE = "check_params"  # reads every key: any change reruns it, and it writes the same bytes


def reach() -> dict[str, tuple[str, ...]]:
    """{"beta": ("train",), "data.limit": ("train", "evaluate", "plot", "export"), ...}: for each
    key of params.yaml, the stages whose outputs it changes, so the stages a change reruns besides
    check_params (and, through train's new model, the stages after train)."""
    from betavae.pipeline import dotted

    return {key: tuple(stage for stage in STAGES_WITH_PARAMS
                       if any(key == listed or key.startswith(listed + ".") for listed in stage_params(stage)))
            for key in dotted.flatten(Params().to_dict())}


def reach_table() -> str:
    """The Markdown table of `reach`: a row per set of stages, with the keys that rerun exactly those."""
    rows = ["| `dvc exp run -S KEY=...` reruns | for these keys |", "|---|---|"]
    grouped: dict[tuple[str, ...], list[str]] = {}
    for key, stages in reach().items():
        grouped.setdefault(stages, []).append(f"`{key}`")
    for stages, keys in grouped.items():
        then = "; then, as the model changes, the stages after train" if "train" in stages else ""
        rows.append(f"| {CHECK_STAGE}, {', '.join(stages)}{then} | {', '.join(keys)} |")
    return "\n".join(rows)


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


def design_differs(design: Path) -> bool:
    text = design.read_text()
    return fill(text, REACH_BLOCK, reach_table()) != text


def rewrite_design(design: Path) -> None:
    atomic.write_text(design, fill(design.read_text(), REACH_BLOCK, reach_table()))


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
    parser.add_argument("--dvc-yaml", type=Path, default=DVC_YAML, help="the file to rewrite (default: %(default)s)")
    args = parser.parse_args()
    root = args.dvc_yaml.resolve().parent
    lists, design = differences(args.dvc_yaml, root), root / DESIGN
    table = [f"{DESIGN}'s param-reach table"] if design_differs(design) else []
    if args.check:
        if lists or table:
            raise BetaVAEError(f"{args.dvc_yaml} differs from the package: {'; '.join(lists + table)} "
                               "(`make dvc-yaml` rewrites it)")
        say(f"dvc_yaml: {args.dvc_yaml} lists what the package says")
        return
    if lists:
        rewrite(args.dvc_yaml, root)
    if table:
        rewrite_design(design)
    say(f"dvc_yaml: rewritten: {'; '.join(lists + table)}" if lists or table else "dvc_yaml: up to date")

if __name__ == "__main__":
    main()
