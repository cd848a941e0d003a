"""The README as an executable spec: every bash, python and console block of README.md, then of the
page its errors section links (docs/troubleshooting.md), runs in order in a fresh clone of this
repository, and what the README says around them holds.

The blocks are read by pytest-codeblocks (its parser of Markdown code blocks; its runner would run
them in pytest's own directory, so they run here, in the clone). A bash block runs as a script with
`set -e`; a python block with the clone's interpreter; a console block is a transcript: each `$ `
line runs, and what it prints (stdout and stderr together) must be the lines below it, a line `...`
standing for any number of lines. The Experiments blocks train on the smoke-sized params that the
README's own `make smoke` block writes, and MNIST comes from MNIST_DIR (README: where the data is),
so nothing here uses the network."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_codeblocks import extract_from_file

from scripts.workspace import SMOKE

RUN = ("bash", "python", "console")  # the block languages that run; any other is text
SPEC = ("README.md", "docs/troubleshooting.md")  # the files whose blocks run, in this order
BLOCK_TIMEOUT_S = 1800  # a bound on one block, far above what the smoke-sized runs take
SHOW_WIDTH = 100  # the README's `dvc exp show` must fit this terminal
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # where it starts in its file
    file: str = "README.md"


def spec_blocks(root: Path) -> list[Block]:
    """The blocks of SPEC's files under root, in order."""
    return [Block(block.syntax.split()[0] if block.syntax else "", block.code, block.lineno, name)
            for name in SPEC for block in extract_from_file(root / name)]


def transcript(code: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, the lines it must print) pairs."""
    steps: list[tuple[str, list[str]]] = []
    for text in code.splitlines():
        if text.startswith("$ "):
            steps.append((text[2:], []))
        elif steps:
            steps[-1][1].append(text.rstrip())
        elif text.strip():
            raise AssertionError(f"a console block must start with a `$ ` line, not {text!r}")
    return steps


def matches(printed: list[str], expected: list[str]) -> bool:
    """Whether printed is expected, each `...` line standing for any number of lines."""
    if not expected:
        return not printed
    if expected[0] == "...":
        return any(matches(printed[start:], expected[1:]) for start in range(len(printed) + 1))
    return bool(printed) and printed[0] == expected[0] and matches(printed[1:], expected[1:])


def test_a_transcript_reads_commands_and_their_lines_with_gaps():
    steps = transcript("$ dvc exp run -S x=1\nERROR: no\n...\n$ make reference\n...\n")
    assert steps == [("dvc exp run -S x=1", ["ERROR: no", "..."]), ("make reference", ["..."])]
    assert matches(["ERROR: no", "more", "lines"], ["ERROR: no", "..."])
    assert matches(["a", "b", "c"], ["...", "c"]) and not matches(["a", "b"], ["...", "c"])
    assert not matches(["ERROR: yes"], ["ERROR: no", "..."]) and matches([], ["..."])


def test_a_block_runs_a_command_only_where_a_line_starts_with_it():
    assert runs(Block("bash", "make setup\ndvc exp run -S beta=1.0   # again\n", 1), "dvc exp run -S beta=1.0")
    assert runs(Block("console", "$ make reference\n...\n", 1), "make reference")
    assert not runs(Block("bash", "source .venv/bin/activate  # then: dvc exp run -S beta=1.0\n", 1),
                    "dvc exp run -S beta=1.0")


def test_the_readme_has_blocks_of_every_kind_and_only_kinds_that_run(repo_root):
    languages = [block.language for block in spec_blocks(repo_root)]
    assert set(languages) <= set(RUN), f"a block in another language than {RUN} would not be run: {languages}"
    assert set(languages) == set(RUN)


@dataclasses.dataclass
class Clone:
    root: Path
    env: dict
    printed: list[str] = dataclasses.field(default_factory=list)  # what each block printed, in order

    def sh(self, command: list[str], check: bool = True, timeout: float = BLOCK_TIMEOUT_S) -> str:
        ended = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        output = ended.stdout + ended.stderr
        assert not check or ended.returncode == 0, f"{' '.join(command)} failed ({ended.returncode}):\n{output}"
        return output

    def clean(self) -> None:
        """Nothing the README did shows in git, and DVC finds every stage up to date."""
        assert self.sh(["git", "status", "--porcelain"]) == "", "a README command left files git shows"
        assert json.loads(self.sh(["dvc", "status", "--json"]) or "{}") == {}


def fresh_clone(copy: Callable[[Path], None], destination: Path, mnist: Path) -> Clone:
    """A clone of what this checkout would commit (git history aside), with MNIST in MNIST_DIR and the
    clone's own package first on the path (its .venv is the running one: `shared_environment`)."""
    copy(destination)
    env = {**os.environ, "MNIST_DIR": str(mnist), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test",
           "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@example.com", "PYTHONPATH": str(destination)}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join([str(destination / ".venv" / "bin"),
                                   *(part for part in env["PATH"].split(os.pathsep)
                                     if Path(part).resolve() != Path(sys.executable).parent.resolve())])
    clone = Clone(destination, env)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        clone.sh(command)
    return clone


# What the README says beside a block, checked after the block ran: (a text the block holds, the check).
def _after_repro(clone: Clone, printed: str) -> None:
    for stage in ("train", "evaluate", "plot", "export"):
        assert f"Stage '{stage}' didn't change, skipping" in printed, f"make repro reran {stage}:\n{printed}"
    clone.clean()


def _after_the_commands(clone: Clone, printed: str) -> None:
    assert (clone.root / "out" / "samples.png").read_bytes() == \
        (clone.root / "reports" / "figures" / "samples.png").read_bytes(), "README: exactly reports/figures/samples.png"
    written = {path.name for path in (clone.root / "out").iterdir()}
    assert {"digit-0000.png", "recon.png", "latents.csv", "traversal.png"} <= written
    clone.clean()  # out/ is ignored: nothing lands in the repository


def _after_an_experiment(clone: Clone, printed: str) -> None:
    for stage in ("train", "evaluate", "plot", "export"):
        assert f"Running stage '{stage}'" in printed, f"README: {stage} runs again\n{printed}"
    assert "Stage 'download' didn't change, skipping" in printed, "README: download is cached"
    show = next(line for line in _readme_command_lines(clone, "dvc exp show"))
    # The smoke-sized params differ from HEAD only because `make smoke` set them: a user's run differs
    # in what its -S set, so the columns they add are dropped to judge the README's line.
    smoke = "|".join(re.escape(assignment.split("=")[0]) for assignment in SMOKE)
    table = [ANSI.sub("", line).rstrip()
             for line in clone.sh(["bash", "-c", f"{show} --drop '{smoke}'"]).splitlines()]
    too_wide = [line for line in table if len(line) > SHOW_WIDTH]
    assert not too_wide, f"README's `dvc exp show` is wider than {SHOW_WIDTH} columns:\n" + "\n".join(table)
    header = next(line for line in table if "Experiment" in line)
    assert all(name in header for name in ("test.nll", "test.recon", "test.kl", "beta")), header
    _compared_as_dvc_compares(clone)


METRICS = {"recon", "kl", "loss", "neg_elbo", "nll"}  # test metrics every run records and DVC compares


def _compared_as_dvc_compares(clone: Clone) -> None:
    """The experiment beside HEAD in what the README's neighbours print: `dvc metrics diff` has every test
    metric, `dvc exp show` both runs' β and metrics, `dvc plots diff HEAD <exp>` the training curves,
    the snapshots and the figures of both."""
    diff = json.loads(clone.sh(["dvc", "metrics", "diff", "--json"]))["reports/metrics.json"]
    assert {f"test.{metric}" for metric in METRICS} <= set(diff), diff
    data = [revision["data"] for baseline in json.loads(clone.sh(["dvc", "exp", "show", "--json"]))
            if baseline["rev"] != "workspace"  # the workspace: a copy of the run applied last
            for revision in [baseline, *(r for e in baseline.get("experiments") or [] for r in e["revs"])]
            if revision["data"].get("metrics")]
    assert sorted(entry["params"]["params.yaml"]["data"]["beta"] for entry in data) == [0.8, 1.0]
    assert all(set(entry["metrics"]["reports/metrics.json"]["data"]["test"]) >= METRICS for entry in data)
    (experiment,) = clone.sh(["dvc", "exp", "list", "--name-only"]).split()
    plots = json.loads(clone.sh(["dvc", "plots", "diff", "HEAD", experiment, "--json"]))["data"]
    for name in ("train/loss.tsv", "val/loss.tsv", "lr.tsv"):  # DVCLive's folder, a chart a metric
        series = plots[f"reports/train/plots/metrics/{name}"][0]["content"]["data"]["values"]
        assert {row["rev"] for row in series} == {"HEAD", experiment}, name
    snapshots = {image["revisions"][0] for name, images in plots.items()
                 if name.startswith("reports/train/plots/images/samples/") for image in images}
    assert snapshots == {"HEAD", experiment}, sorted(plots)
    assert sorted(image["revisions"][0] for image in plots["reports/figures/traversal.png"]) == \
        sorted(["HEAD", experiment])


def _after_the_queue(clone: Clone, printed: str) -> None:
    experiments = json.loads(clone.sh(["dvc", "exp", "show", "--json"]))
    done = [run for baseline in experiments for run in baseline.get("experiments") or []
            if all(revision.get("error") is None for revision in run["revs"])]
    assert len(done) >= 3, f"README: the queued experiments ran\n{printed}"
    rows = (clone.root / "out" / "rate_distortion.csv").read_text().splitlines()
    assert rows[0] == "name,beta,z_dim,epochs,seed,recon,kl,loss,neg_elbo,nll,active_units,kl_dims_90"
    # One run length: the smoke-sized runs, not HEAD's reference run; "2.0" from -S is the float 2.0.
    assert [float(row.split(",")[1]) for row in rows[1:]] == [0.5, 1.0, 2.0], rows
    assert {row.split(",")[3] for row in rows[1:]} == {"2"}, rows
    assert (clone.root / "out" / "rate_distortion.png").stat().st_size > 10_000


def _after_reference(clone: Clone, printed: str) -> None:
    clone.clean()
    assert clone.sh(["git", "diff", "HEAD", "--stat"]) == ""


CLAIMS: list[tuple[str, Callable[[Clone, str], None]]] = [
    ("make repro", _after_repro),
    ("betavae sample", _after_the_commands),
    ("dvc exp run -S beta=1.0", _after_an_experiment),
    ("dvc exp run --run-all", _after_the_queue),
    ("make reference", _after_reference),
]


def _stale_before_the_data(clone: Clone) -> list[str]:
    """What `dvc status` finds changed in the clone besides MNIST, which `make repro` is still to fetch."""
    stale = []
    for stage, changes in json.loads(clone.sh(["dvc", "status", "--json"]) or "{}").items():
        for change in changes:
            for kind, paths in (change.items() if isinstance(change, dict) else [("changed", change)]):
                left = {path: what for path, what in paths.items() if path != "data/mnist"} \
                    if isinstance(paths, dict) else paths
                if left:
                    stale.append(f"{stage}: {kind} {left}")
    return stale


def _readme_command_lines(clone: Clone, command: str) -> list[str]:
    """The README's shell line that starts with `command`, continuation lines joined."""
    text = (clone.root / "README.md").read_text().replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip().startswith(command)]


def runs(block: Block, command: str) -> bool:
    """Whether a line of block starts with command (a `$ ` prompt and comments aside)."""
    lines = (line.removeprefix("$ ").split("#")[0].strip() for line in block.code.splitlines())
    return any(line.startswith(command) for line in lines)


def run_block(clone: Clone, block: Block) -> str:
    where = f"{block.file} line {block.line}"
    if block.language == "bash":
        return clone.sh(["bash", "-e", "-o", "pipefail", "-c", block.code])
    if block.language == "python":
        return clone.sh([str(clone.root / ".venv" / "bin" / "python"), "-c", block.code])
    printed_all = []
    for command, expected in transcript(block.code):
        ended = subprocess.run(["bash", "-c", command], cwd=clone.root, env=clone.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT_S)
        printed = [line.rstrip() for line in ended.stdout.splitlines()]
        assert matches(printed, expected), f"{where}: `{command}` printed\n" + "\n".join(printed)
        printed_all += printed
    return "\n".join(printed_all)


@pytest.mark.slow
def test_every_block_of_the_readme_runs_in_a_fresh_clone_and_does_what_it_says(copy_repo, real_mnist, tmp_path):
    clone = fresh_clone(copy_repo, tmp_path / "clone", real_mnist)
    shared_environment(clone.root / ".venv")
    stale = _stale_before_the_data(clone)
    assert not stale, f"dvc.lock is stale ({stale}): `make repro` would retrain (see tests/test_committed_outputs.py)"
    checked = set()
    for block in spec_blocks(clone.root):
        printed = run_block(clone, block)
        for marker, check in CLAIMS:
            if runs(block, marker) and marker not in checked:
                check(clone, printed)
                checked.add(marker)
    assert checked == {marker for marker, _ in CLAIMS}, f"README lost a block: {set(dict(CLAIMS)) - checked}"


def shared_environment(venv: Path) -> None:
    """The clone's .venv: the one running the tests, linked (a real `make setup` installs GBs; its own
    test is tests/test_setup.py). `make setup` there finds it built from the same requirements and
    has nothing to do; PYTHONPATH puts the clone's own package before the one installed there."""
    from scripts import setup_env

    source = Path(sys.prefix)
    stamp = source / setup_env.STAMP
    if not stamp.is_file() or stamp.read_text().strip() != setup_env.fingerprint(venv.parent):
        pytest.fail(f"{source} was not built from this checkout's requirements: run `make setup` first (the "
                    "README's `make setup` would otherwise reinstall into it)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.symlink_to(source, target_is_directory=True)
