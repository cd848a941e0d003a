"""Each stage's script in-process, on tiny data: what it writes when all goes well."""

import json

from betavae.core.metrics import METRICS
from stages.check_params import CHECKED
from stages.plot import FIGURES


def test_check_params_writes_the_same_bytes_for_any_valid_file(stage_dir, stage, yaml_text, tiny):
    out = stage_dir.root / "checked.txt"
    assert stage("check_params", ["--params", str(stage_dir.params), "--out", str(out)]).status == 0
    first = out.read_bytes()
    stage_dir.params.write_text(yaml_text(tiny(beta=2.0)))
    assert stage("check_params", ["--params", str(stage_dir.params), "--out", str(out)]).status == 0
    assert out.read_bytes() == first == CHECKED.encode()


def test_train_evaluate_and_plot_write_every_output(stage_dir, stage, yaml_text, tiny):
    stage_dir.params.write_text(yaml_text(tiny(epochs=1)))
    assert stage("train", stage_dir.train()).status == 0
    ended = stage("evaluate", stage_dir.evaluate())
    assert ended.status == 0, ended.stderr
    assert set(json.loads((stage_dir.root / "metrics.json").read_text())["test"]) == set(METRICS)
    ended = stage("plot", stage_dir.plot())
    assert ended.status == 0, ended.stderr
    assert sorted(path.name for path in (stage_dir.root / "figures").iterdir()) == sorted(FIGURES)
    assert len(FIGURES) == 6 and all(name.endswith(".png") for name in FIGURES)
