"""The benchmarks run and write the figures docs/performance.md reads: a broken benchmark would
otherwise show only when someone next measures. Their numbers are not asserted (speed goals live in
the benchmarks, never in tests); what they record beside them is."""

from __future__ import annotations

import json
import sys

import pytest

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_tile

processor\t: 1
cpu family\t: 99
model name\t: another core
flags\t\t: fpu
"""


def test_the_machine_is_described_by_its_first_processor(benchmark, tmp_path, monkeypatch):
    machine = benchmark("machine")
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    described = machine.describe()
    assert (described["cpu"], described["cpu_family"], described["cpu_model"]) == (
        "AMD EPYC 9R14 96-Core Processor", 25, 17)
    assert described["isa"] == ["avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile"]
    assert described["avx512_bf16"] and described["amx"]
    assert "(family 25 model 17)" in machine.summary(described)


def test_a_machine_without_cpuinfo_is_still_described(benchmark, tmp_path, monkeypatch):
    machine = benchmark("machine")
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    described = machine.describe()
    assert described["isa"] == [] and described["cpu_family"] is None and not described["amx"]
    assert "no AVX2" in machine.summary(described)


@pytest.mark.slow
def test_the_training_benchmark_writes_every_figure(repo_root, tmp_path, make_mnist, tiny, yaml_text, run):
    make_mnist(tmp_path / "mnist")
    (tmp_path / "params.yaml").write_text(yaml_text(tiny()))
    out = tmp_path / "bench.json"
    run([sys.executable, str(repo_root / "benchmarks" / "train_speed.py"), "--quick", "--trials", "1",
         "--steps", "1", "--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "mnist"),
         "--out", str(out)], cwd=tmp_path)
    report = json.loads(out.read_text())
    for loop in ("project", "conventional", "floor", "floor_stock_output_layer"):
        assert len(report[loop]["trials"]) == 1 and report[loop]["images_per_s"] > 0
    assert report["floor"]["gflop_per_image"] > 0 and report["ceiling"]["onednn_gflops"] > 0
    assert report["floor_vs_ceiling"] > 0 and report["evaluate_nll"]["binarized"]["images_per_s"] > 0
    assert report["settings"]["batch_size"] == tiny()["batch_size"]
    assert {"cpu", "cpu_family", "cpu_model", "isa", "amx", "onednn"} <= set(report["machine"])


@pytest.mark.slow
def test_the_step_profile_names_every_kernel(repo_root, tmp_path, run):
    out = tmp_path / "profile.json"
    run([sys.executable, str(repo_root / "benchmarks" / "profile_step.py"), "--steps", "1", "--out", str(out)],
        cwd=tmp_path)
    report = json.loads(out.read_text())
    convolutions = [row for row in report["kernels"] if row["primitive"] in ("convolution", "deconvolution")]
    passes = {row["propagation"] for row in convolutions}
    assert {"forward_training", "backward_data", "backward_weights"} <= passes
    assert report["onednn_ms"] == pytest.approx(sum(row["ms_per_step"] for row in report["kernels"]), abs=0.05)
    assert report["step_gflop"] == pytest.approx(_step_gflop(), rel=1e-3)  # each FLOP counted once
    assert report["operators"] and "isa" in report["machine"]


def _step_gflop() -> float:
    """FLOPs of a forward and backward pass of the default model on a batch of 256, counted directly."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from betavae.core.model import ConvVAE, ModelConfig
    model, counter = ConvVAE(ModelConfig(latent_dim=32, dropout=0.1)), FlopCounterMode(display=False)
    with counter:
        logits, mu, logvar, _ = model(torch.zeros(256, 1, 28, 28))
        (logits.sum() + mu.sum() + logvar.sum()).backward()
    return counter.get_total_flops() / 1e9


def test_the_tier_timer_records_what_pytest_counted_and_refuses_a_failed_tier(benchmark):
    tiers = benchmark("test_tiers")
    output = "tests/x.py::y 1.0s\n== 659 passed, 5 skipped, 3 deselected in 126.21s (0:02:06) ==\n"
    assert tiers.summary(output) == {"seconds": 126, "tests": 664}
    for bad in ("== 3 failed, 659 passed in 126.21s ==", "== 1 error in 2.00s ==", "no summary at all"):
        with pytest.raises(tiers.TimingError):
            tiers.summary(bad)
    with pytest.raises(tiers.TimingError, match=r"1 failed, 9 passed \(tests/test_x\.py::test_y\)$"):
        tiers.summary("FAILED tests/test_x.py::test_y - AssertionError\n== 1 failed, 9 passed in 3.00s ==")
    machine = {"cpu": "AMD EPYC Processor", "cpu_count": 2, "cpu_family": 25, "cpu_model": 1, "isa": ["avx2"]}
    assert tiers.machine_text(machine) == "the 2-core AMD EPYC machine (family 25 model 1, AVX2)"
