"""The docs hold the committed records' numbers (scripts/readme_results.py fills their marked blocks), their
other numbers are the code's and the committed settings', every link in them and in the README leads
somewhere, and they state what holds now, not the story of how it came about."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from betavae.core.data import TEST_BINARIZATION_SEED, VALIDATION_BINARIZATION_SEED
from betavae.core.idx import MNIST_TRAIN_IMAGES
from betavae.core.metrics import LATENTS_PER_DECODE
from betavae.pipeline import yamlfile
from betavae.pipeline.params import PARAMS_FILE, Params
from betavae.uses.onnx_graphs import TOLERANCE
from scripts.dvc_yaml import DESIGN, REACH_BLOCK
from scripts.readme_results import (
    block_names,
    blocks,
    doc_blocks,
    fill,
    gpu_check_text,
    gpu_text,
    recipe_text,
)
from scripts.vendor_onnxruntime_web import VERSION


def _documents(repo_root: Path) -> list[Path]:
    return [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]


def _stale(docs: Path, found: dict[str, dict[str, str]]) -> list[str]:
    """`doc:block` for every block whose text in docs/ is not what the records give."""
    return [f"{name}:{block}" for name, texts in found.items() for block, text in texts.items()
            if f"<!-- {block}:begin -->\n{text}\n<!-- {block}:end -->" not in (docs / name).read_text()]


def test_every_block_of_the_docs_holds_the_committed_records(repo_root):
    _, skipped = blocks(repo_root / "reports", repo_root / "models" / "model.pt", repo_root / PARAMS_FILE)
    assert skipped is None, skipped
    found = doc_blocks(repo_root / "reports", reference_run=True)
    assert _stale(repo_root / "docs", found) == [], "run `python scripts/readme_results.py`"
    elsewhere = {DESIGN.name: [REACH_BLOCK]}  # filled by `make dvc-yaml`, held by tests/test_dvc_yaml.py
    for doc in sorted((repo_root / "docs").glob("*.md")):  # no block that nothing fills
        assert sorted(block_names(doc.read_text())) == sorted([*found.get(doc.name, {}), *elsewhere.get(doc.name, [])])


def test_a_record_edited_without_regenerating_the_docs_is_caught(repo_root, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(repo_root / "reports", reports)
    record = json.loads((reports / "binarized_mnist.json").read_text())
    record["metrics"]["binarized.nll"] = 88.1234
    (reports / "binarized_mnist.json").write_text(json.dumps(record))
    speed = json.loads((reports / "bench" / "train_speed.json").read_text())
    speed["project"]["images_per_s"] = 1234.0
    (reports / "bench" / "train_speed.json").write_text(json.dumps(speed))
    found = doc_blocks(reports, reference_run=True)
    assert _stale(repo_root / "docs", found) == ["performance.md:bench-loops", "method.md:binarized-experiment",
                                                 "results.md:literature"]
    assert "**88.12**" in found["method.md"]["binarized-experiment"]
    assert "| 1,234 |" in found["performance.md"]["bench-loops"]


def test_the_blocks_about_the_reference_run_wait_for_it(repo_root):
    found = doc_blocks(repo_root / "reports", reference_run=False)
    assert "bf16-quality" not in found["performance.md"] and "reference" not in found["performance.md"]
    assert found["investigations.md"] == {}
    assert "bench-loops" in found["performance.md"] and "binarized-experiment" in found["method.md"]


def test_the_gpu_paragraph_is_the_gpu_check_or_says_there_is_none():
    assert gpu_check_text(None).startswith("**Not measured.**")
    check = {"gpu": "NVIDIA H200", "torch": "2.14.1+cu130", "epochs": 120, "train_stage_seconds": 27.4,
             "repro_seconds": 61.2, "test": {"nll": 96.01, "recon": 69.2, "kl": 31.1},
             "images_per_s": {"project": 250000.0, "project_eager": 40000.0, "conventional": 30000.0},
             "cuda_tests": {"status": 0, "summary": "12 passed in 40.0s"}}
    text = gpu_check_text(check)
    for expected in ("NVIDIA H200, 2.14.1+cu130", "| the train stage, 120 epochs | 27 s |", "| 61 s |",
                     "250,000 / 40,000 / 30,000", "96.01 / 69.20 / 31.10", "12 passed in 40.0s"):
        assert expected in text
    failed = gpu_check_text({**check, "images_per_s": {}, "bench_error": ["out of memory"]})
    assert "failed: out of memory" in failed and "graphed step" not in failed
    assert "the conventional loop's" not in gpu_text(check)  # the README's line, without the benchmark's figure
    assert "its step ran 6.2× the conventional loop's" in gpu_text({**check, "project_vs_conventional": 6.24})


def test_the_recipe_paragraph_is_the_recipe_run_or_says_there_is_none():
    assert recipe_text(None).startswith("**Not made yet.**")
    run = {"command": "dvc exp run -n iwae-5 ...", "params": {"z_dim": 32, "train_samples": 5, "epochs": 800},
           "metrics": {"binarized.nll": 83.456, "binarized.importance_samples": 5000}}
    assert "binarized test NLL **83.46** nats at K = 5000" in recipe_text(run)
    assert "k = 5, up to 800 epochs" in recipe_text(run)


def test_filling_a_doc_leaves_everything_outside_its_blocks():
    text = "# Title\n\nprose 1.0\n\n<!-- study:begin -->\nold\n<!-- study:end -->\n\nmore prose\n"
    filled = fill(text, "study", "| new |")
    assert filled == text.replace("old", "| new |") and fill(filled, "study", "| new |") == filled
    assert block_names(filled) == ["study"]


def test_the_docs_prose_numbers_are_the_codes_and_the_settings(repo_root):
    docs, defaults = repo_root / "docs", Params()
    method, performance, explorer = (" ".join((docs / name).read_text().split())
                                     for name in ("method.md", "performance.md", "explorer.md"))
    training = MNIST_TRAIN_IMAGES - defaults.data.val_size
    assert f"The {MNIST_TRAIN_IMAGES:,} training images" in method
    assert f"validation images (default {defaults.data.val_size:,})" in method
    assert f"`data.TEST_BINARIZATION_SEED` ({TEST_BINARIZATION_SEED})" in method
    assert f"`data.VALIDATION_BINARIZATION_SEED`, {VALIDATION_BINARIZATION_SEED})" in method
    assert f"trains on {training:,} images ({defaults.data.val_size:,} held out" in method
    assert f"its {defaults.epochs}-epoch schedule" in method
    assert f"costs 50 times the default K = {defaults.eval.binarized_samples} " in method
    assert f"epoch of {training:,} training images" in performance
    assert (f"| {LATENTS_PER_DECODE['cpu']} latent samples a decoder call on the CPU |" in performance
            and f"a GPU takes {LATENTS_PER_DECODE['cuda']} |" in performance)
    assert float(re.search(r"`betavae\.uses\.onnx_graphs\.TOLERANCE` = ([0-9.e-]+)", explorer)[1]) == TOLERANCE
    assert f"pinned to version {VERSION} " in explorer


def test_the_study_and_the_recipe_in_the_docs_are_the_committed_settings(repo_root):
    docs = repo_root / "docs"
    space = yamlfile.read(repo_root / "search.yaml")
    beta, fixed = space["params"]["beta"], space["fixed"]
    trials = (repo_root / "reports" / "search" / f"{space['study']}_trials.csv").read_text().splitlines()[1:]
    search = " ".join((docs / "search.md").read_text().split())
    assert (f"β log-uniform in [{beta['low']:g}, {beta['high']:g}], `z_dim` "
            f"{' or '.join(str(choice) for choice in space['params']['z_dim']['choices'])}, {fixed['epochs']} epochs "
            f"a trial (warm-up {fixed['warmup_epochs']}, KL annealing {fixed['kl_anneal_epochs']}), "
            f"{fixed['eval']['iw_samples']} importance samples") in search
    assert f"--trials {len(trials)} --reports reports`" in search
    recipe = yamlfile.read(repo_root / "likelihood.yaml")
    settings = [recipe["recipe"], *recipe["variants"].values()]
    method = (docs / "method.md").read_text()
    table = method[method.index("| Change from the spec |"):method.index("The test set is touched once")]
    pairs = re.findall(r"`([\w.]+): ([^`]+)`", table)
    assert len(pairs) >= 8
    for key, value in pairs:
        assert any(key in setting and setting[key] == yamlfile.parse(value, "docs/method.md")
                   for setting in settings), f"{key}: {value}"
    assert f"at K = {recipe['test_samples']} (`test_samples`)" in method


# GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces as hyphens.
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)


def _anchors(markdown: str) -> set[str]:
    seen, anchors = {}, set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_relative_link_in_the_readme_and_the_docs_leads_somewhere(repo_root):
    broken = []
    for document in _documents(repo_root):
        text = document.read_text()
        for target in LINK.findall(FENCE.sub("", text)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = (document.parent / path).resolve() if path else document
            if not destination.exists():
                broken.append(f"{document.name}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination.read_text()):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert broken == []


def test_the_anchor_of_a_heading_is_githubs():
    assert _anchors("# Title\n## params.yaml is data\n## `make bench`, again\n## Title\n") == {
        "title", "paramsyaml-is-data", "make-bench-again", "title-1"}


# What a page of the project must not hold: issue numbers and the story of who did what when.
STORY = re.compile(r"\bissues? #?\d+|(?<![\w&/])#\d+\b|\bsessions?\b|\bwas lent\b|\bthis stop\b|\bstop \d+\b"
                   r"|before/after \(issue", re.IGNORECASE)


def test_the_readme_and_the_docs_state_what_holds_not_how_it_came_about(repo_root):
    found = [f"{document.name}:{number}: {match.group()}" for document in _documents(repo_root)
             for number, line in enumerate(document.read_text().splitlines(), start=1)
             for match in STORY.finditer(line)]
    assert found == []
    assert STORY.findall("as quoted in issue 21; the session that built it; see #33; Stop 12") == [
        "issue 21", "session", "#33", "Stop 12"]


@pytest.mark.slow
def test_the_recorded_test_counts_are_the_suites(repo_root, run, benchmark):
    """reports/test_times.json (the README's tests line) counts the tests there are now; while
    benchmarks/test_tiers.py times the tiers to write it, the counts it writes are pytest's own."""
    if os.environ.get(benchmark("test_tiers").RECORDING_VARIABLE):
        pytest.skip("benchmarks/test_tiers.py is timing the tiers to record their counts")

    def collected(*selection: str) -> int:
        output = run([sys.executable, "-m", "pytest", "--collect-only", "-qq", "-p", "no:cacheprovider", *selection],
                     repo_root).stdout  # with the configured -q: a line a file, "tests/test_x.py: 12"
        return sum(int(count) for count in re.findall(r"(?m)^tests/\S+\.py: (\d+)$", output))

    times = json.loads((repo_root / "reports" / "test_times.json").read_text())
    assert (times["fast"]["tests"], times["full"]["tests"]) == (collected("-m", "not slow"), collected()), \
        "time both tiers again and record them in reports/test_times.json"
