"""Two states of the workspace, one command each (the Makefile's `smoke` and `reference`):

    python -m scripts.workspace smoke       params.yaml made smoke-sized (SMOKE, written by DVC's own
                                            `dvc exp run -S` writer): every command of the README then
                                            trains for seconds on a CPU instead of half an hour
    python -m scripts.workspace reference   the reference run back, as HEAD has it: params.yaml,
                                            dvc.lock and every output the pipeline keeps in git; a file
                                            an experiment added inside an output folder removed; the
                                            outputs DVC caches (data/mnist) checked out

After `dvc exp run`, `make smoke` or an edit, the workspace holds another run than the reference
(the `betavae` commands use its model): `make reference` is the way back. Your other files (code,
notes, ignored files such as models/checkpoint.pt) are left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from betavae.compat.dvc_workspace import RECORD as FAILED_RUN_RECORD
from betavae.errors import ArgumentParser, BetaVAEError, one_line, run, say
from betavae.pipeline import yamlfile
from betavae.pipeline.params import PARAMS_FILE, load_params

DVC_YAML, DVC_LOCK = "dvc.yaml", "dvc.lock"
# A run small enough to try every command in seconds: 2 epochs over 448 images on a CPU.
SMOKE = ("epochs=2", "warmup_epochs=1", "kl_anneal_epochs=1", "batch_size=64", "snapshot_every=1",
         "data.limit=512", "data.val_size=64", "select.samples=10", "eval.iw_samples=10",
         "eval.binarized_samples=10")


class WorkspaceError(BetaVAEError):
    """A tool this needs failed or is missing; the message names it."""


def smoke(root: Path) -> None:
    """Write SMOKE into params.yaml as `dvc exp run -S` would, and check the result."""
    from dvc.utils.hydra import apply_overrides  # the writer of `dvc exp run -S`

    params = root / PARAMS_FILE
    apply_overrides(params, list(SMOKE))
    load_params(params)
    say(f"smoke: {PARAMS_FILE} is smoke-sized ({', '.join(SMOKE)}); `make reference` restores it")


def reference(root: Path) -> None:
    """Restore the reference run's files from HEAD (module docstring)."""
    kept_in_git = _outputs_in_git(root)
    paths = [PARAMS_FILE, DVC_LOCK, *kept_in_git]
    tracked = _git(root, "ls-files", "-z", "--", *paths).split("\0")
    for name in filter(None, tracked):  # a fresh mtime makes git compare contents: DVC may restore an old one
        if (root / name).is_file():
            os.utime(root / name)
    _git(root, "checkout", "HEAD", "--", *paths)
    folders = [path for path in kept_in_git if (root / path).is_dir()]
    if folders:
        _git(root, "clean", "-fdq", "--", *folders)
    _tool(root, "dvc", "checkout", "--quiet")
    (root / FAILED_RUN_RECORD).unlink(missing_ok=True)  # what a failed run left is restored with the rest
    left = _tool(root, "dvc", "status", "--quiet", check=False)
    state = "; `dvc status` is clean" if left.returncode == 0 else "; `dvc status` still lists changes"
    say(f"reference: {PARAMS_FILE}, {DVC_LOCK} and {len(kept_in_git)} outputs are HEAD's{state}")


def _outputs_in_git(root: Path) -> list[str]:
    """dvc.yaml's outputs that git keeps (cache: false), in its order."""
    stages = yamlfile.read(root / DVC_YAML)["stages"]
    found = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                path, options = next(iter(out.items())) if isinstance(out, dict) else (out, None)
                if options and options.get("cache") is False:
                    found.append(str(path))
    return found


def _git(root: Path, *arguments: str) -> str:
    return _tool(root, "git", *arguments).stdout


def _tool(root: Path, name: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(name) is None:
        raise WorkspaceError(f"{name} is not installed or not on PATH (`make setup`, then "
                             "`source .venv/bin/activate`)")
    ended = subprocess.run([name, *arguments], cwd=root, capture_output=True, text=True)
    if check and ended.returncode != 0:
        raise WorkspaceError(f"`{name} {' '.join(arguments[:2])}` failed: "
                             f"{one_line(ended.stderr or ended.stdout)[:300] or f'exit status {ended.returncode}'}")
    return ended


def main() -> None:
    parser = ArgumentParser(prog="python -m scripts.workspace", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state", choices=("smoke", "reference"), help="which state to put the workspace in")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: the current directory)")
    args = parser.parse_args()
    run(lambda: (smoke if args.state == "smoke" else reference)(args.root), args.state)


if __name__ == "__main__":
    main()
