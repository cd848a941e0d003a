"""Stage check_params: validate the whole params.yaml, then write --out, whose fixed text says so.

DVC reruns a stage only when a param it lists changes. This stage lists the whole file, and every
other stage depends on its output, so whenever any stage would run (`dvc repro`, `dvc repro train`,
`dvc exp run`), every key is checked first, including a key added by hand that no stage reads. The
output's bytes never change, so a valid change to an unrelated param reruns only the stages that
read it."""

from pathlib import Path

from betavae.compat import dvc_workspace
from betavae.core import schedules
from betavae.errors import ArgumentParser, say
from betavae.pipeline import atomic
from betavae.pipeline.params import PARAMS_FILE, load_params

# The output's whole text. It names nothing that a refactor could move (a module's path, a version):
# every other stage depends on these bytes, so a change here reruns the whole pipeline for everyone.
CHECKED = f"{PARAMS_FILE} passed validation\n"


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="the file that records the check")
    args = parser.parse_args()
    params = load_params(args.params)
    for warning in schedules.warnings(params):
        say(f"check_params: warning: {warning}")
    atomic.write_text(args.out, CHECKED)
    say(f"check_params: {args.params} is valid")


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "check_params")
