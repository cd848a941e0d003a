"""Binarized MNIST and the literature's likelihood protocol (betavae/core/data.py, betavae/core/metrics.py)."""

import json
import math

import pytest
import torch

from betavae.core import metrics
from betavae.core.data import TEST_BINARIZATION_SEED, Split, bernoulli, binarized, load_test, to_float
from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import gaussian_log_density
from betavae.pipeline import modelfile
from betavae.pipeline.params import parse_params
from betavae.speed import runtime
from betavae.training import loop as training
from betavae.training.distributed import World
from betavae.training.state import Outputs

CPU = runtime.Compute(device=torch.device("cpu"), autocast_dtype=None, channels_last=False)
# Monte Carlo noise allowed between bounds with different numbers of samples on the tiny model below,
# in nats per image (the estimates' spread over seeds is about a tenth of it).
MC_TOLERANCE = 0.5


def _grey(count: int = 64, seed: int = 1) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator), torch.arange(count))


def test_the_binarization_of_held_out_images_is_fixed_by_its_seed_and_draws_each_pixel_from_its_grey():
    grey = _grey(2000)
    once, again = binarized(grey, TEST_BINARIZATION_SEED), binarized(grey, TEST_BINARIZATION_SEED)
    assert torch.equal(once.images, again.images) and torch.equal(once.labels, grey.labels)
    assert set(once.images.unique().tolist()) <= {0, 255}
    assert not torch.equal(once.images, binarized(grey, TEST_BINARIZATION_SEED + 1).images)
    share_on = (once.images == 255).double().mean().item()
    assert share_on == pytest.approx(grey.images.double().mean().item() / 255, abs=0.002)
    assert torch.equal(binarized(Split(torch.full((3, 28, 28), 255, dtype=torch.uint8), torch.arange(3)), 5).images,
                       torch.full((3, 28, 28), 255, dtype=torch.uint8))


def test_training_draws_are_fresh_each_time_and_each_pixel_is_on_with_its_grey_value():
    x = to_float(_grey(256).images)
    generator = torch.Generator().manual_seed(3)
    first, second = (bernoulli(x, torch.rand(x.shape, generator=generator)) for _ in range(2))
    assert not torch.equal(first, second) and set(first.unique().tolist()) <= {0.0, 1.0}
    assert first.mean().item() == pytest.approx(x.mean().item(), abs=0.005)
    assert torch.equal(bernoulli(torch.ones(2, 1, 28, 28), torch.rand(2, 1, 28, 28)), torch.ones(2, 1, 28, 28))


def _model() -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE(ModelConfig(latent_dim=3, dropout=0.1)).eval()


def test_the_importance_weighted_bound_with_one_sample_is_the_elbo():
    model, split = _model(), binarized(_grey(400), 0)
    one = metrics.per_image(model, split, 1, CPU, torch.Generator().manual_seed(7))
    # With one sample, log w = log p(x|z) + log p(z) - log q(z|x): the single-sample ELBO, whose mean
    # over images is the closed-form ELBO -(recon + KL) up to the noise of the KL's estimate.
    x = to_float(split.images)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    noise = torch.randn(1, *mu.shape, generator=torch.Generator().manual_seed(7))[0]
    z = mu + torch.exp(0.5 * logvar) * noise
    log_q = gaussian_log_density(z, mu, logvar)
    log_p = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    assert torch.allclose(one.log_likelihood, (-one.recon + log_p - log_q).double(), atol=1e-4)
    elbo = -(one.recon + one.kl).mean().item()
    assert one.log_likelihood.mean().item() == pytest.approx(elbo, abs=MC_TOLERANCE)


def test_the_bound_does_not_loosen_with_more_samples():
    model, split = _model(), binarized(_grey(100), 0)
    nll = {k: -metrics.per_image(model, split, k, CPU, torch.Generator().manual_seed(k)).log_likelihood.mean().item()
           for k in (1, 10, 50, 200)}
    assert nll[200] <= nll[50] + MC_TOLERANCE <= nll[10] + 2 * MC_TOLERANCE <= nll[1] + 3 * MC_TOLERANCE
    assert nll[200] < nll[1]  # and it does tighten


def test_the_literature_numbers_are_in_nats_and_bits_per_dimension():
    results = metrics.per_image(_model(), binarized(_grey(8), 0), 5, CPU, torch.Generator().manual_seed(0))
    summary = metrics.binarized_summary(results, 5)
    assert summary["bits_per_dim"] == pytest.approx(summary["nll"] / (784 * math.log(2)))
    assert (summary["importance_samples"], summary["binarization_seed"]) == (5, TEST_BINARIZATION_SEED)
    names = [metric.name for metric in metrics.BINARIZED_METRICS]
    assert list(summary) == [*names, "importance_samples", "binarization_seed"]


def test_without_binarization_training_never_draws_binary_images(tmp_path, mnist_dir, tiny_parsed):
    """What keeps `data.binarize: none` the training it always was: not one extra random draw. After an
    epoch, the run's shared generator has made the permutation and the augmentation's draws, no more."""
    params = tiny_parsed(epochs=1)
    trainer = training.prepare(params, mnist_dir, World())
    step = training.make_step(trainer)
    step.start_epoch(1)
    for _ in range(step.steps):
        step()
    expected = torch.Generator().manual_seed(params.seed)
    torch.randperm(len(trainer.train), generator=expected)
    for _ in range(step.steps):
        torch.rand(params.batch_size, 3, generator=expected)
    assert torch.equal(trainer.generator.get_state(), expected.get_state())
    outputs = Outputs(tmp_path / "model.pt", tmp_path / "checkpoint.pt", tmp_path / "live")
    training.train(params, mnist_dir, outputs, log=lambda _: None)
    assert modelfile.ModelFile.read(tmp_path / "model.pt").params.data.binarize == "none"


def test_a_dynamically_binarized_run_validates_and_is_tested_on_binary_images(
        stage_dir, stage, yaml_text, tiny):
    params = tiny(epochs=1, beta=1.0, data={**tiny()["data"], "binarize": "dynamic"},
                  eval={"iw_samples": 2, "binarized_samples": 3})
    stage_dir.params.write_text(yaml_text(params))
    trainer = training.prepare(parse_params(params), stage_dir.root / "mnist", World())
    assert set(trainer.val.images.unique().tolist()) <= {0, 255}  # validation: binarized once
    assert len(trainer.train.images.unique()) > 2  # training: grey, drawn afresh each step
    assert stage("train", stage_dir.train()).status == 0
    ended = stage("evaluate", stage_dir.evaluate())
    assert ended.status == 0, ended.stderr
    metrics = json.loads((stage_dir.root / "metrics.json").read_text())
    assert metrics["binarized"]["importance_samples"] == 3
    binary = load_test(stage_dir.root / "mnist", binarize="dynamic")
    assert set(binary.images.unique().tolist()) <= {0, 255} and len(binary) == len(load_test(stage_dir.root / "mnist"))
