import re

import pytest
import torch

from betavae.core.footprint import training_memory_bytes
from betavae.core.model import ARCHITECTURE, ConvVAE, ModelConfig
from betavae.pipeline import atomic, modelfile
from betavae.pipeline.params import Params
from betavae.speed import runtime
from betavae.speed.kernels import OutputTransposedConv
from betavae.training import resume


def test_shapes_through_encode_reparameterize_decode():
    model = ConvVAE(ModelConfig(latent_dim=7, dropout=0.0)).eval()
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 7)
    assert model.decode(model.reparameterize(mu, logvar)).shape == (5, 1, 28, 28)
    logits, mu2, _, _ = model(x)
    assert logits.shape == (5, 1, 28, 28) and torch.equal(mu, mu2)


def test_channels_follow_the_spec():
    model = ConvVAE(ModelConfig(latent_dim=32, dropout=0.1))
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert [d.in_channels for d in deconvs] + [deconvs[-1].out_channels] == [128, 64, 32, 1]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.decoder.modules()) == 2


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(32, 1, 4, 2, 1, 0), (8, 3, 3, 2, 1, 1), (4, 2, 5, 3, 2, 0)],
                         ids=["decoder-output", "odd-kernel-output-padding", "stride-3"])
def test_the_output_layer_is_conv_transpose2d_forward_and_backward(channels_last, bias, shape):
    in_channels, out_channels, kernel, stride, padding, output_padding = shape
    torch.manual_seed(0)
    layer = OutputTransposedConv(in_channels, out_channels, kernel, stride, padding, output_padding, bias=bias)
    reference = torch.nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding, output_padding, bias=bias)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(6, in_channels, 9, 7)
    if channels_last:
        x, layer, reference = (m.to(memory_format=torch.channels_last) for m in (x, layer, reference))
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, expected = layer(ours), reference(theirs)
    assert y.shape == expected.shape
    channels_last_out = [t.is_contiguous(memory_format=torch.channels_last) for t in (y, expected)]
    assert channels_last_out[0] == channels_last_out[1]
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)
    for name, parameter in layer.named_parameters():
        torch.testing.assert_close(parameter.grad, dict(reference.named_parameters())[name].grad, rtol=1e-4, atol=1e-4)


def test_the_output_layer_runs_in_bf16_under_autocast_and_grads_reach_fp32_weights():
    torch.manual_seed(0)
    layer = OutputTransposedConv(32, 1, 4, stride=2, padding=1)
    reference = torch.nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(4, 32, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, expected = layer(x), reference(x)
    assert y.dtype == expected.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: agreement to a few units in the last place of the largest value
    assert (y.float() - expected.float()).abs().max() <= 2 ** -6 * expected.float().abs().max()
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32


def test_reparameterize_has_the_posterior_moments():
    torch.manual_seed(0)
    mu, logvar = torch.full((200_000, 1), 2.0), torch.full((200_000, 1), 2 * torch.log(torch.tensor(3.0)))
    z = ConvVAE.reparameterize(mu, logvar)
    assert abs(z.mean().item() - 2.0) < 0.03 and abs(z.std().item() - 3.0) < 0.03


def _model_file(model: ConvVAE) -> modelfile.ModelFile:
    provenance = modelfile.Provenance(torch="2.14.1", device="cpu", precision="fp32", processes=1, step="eager")
    return modelfile.ModelFile(model.config, Params(beta=0.5), 4, modelfile.Selection("loss", 123.0), (1.0, 2.0, 3.0),
                               provenance, model.state_dict())


def _saved_model(tmp_path, **overrides):
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.1))
    record = _model_file(model).to_record()
    record.update(overrides)
    atomic.write_torch(tmp_path / "model.pt", record)
    return model


def test_model_file_round_trip_is_self_describing(tmp_path):
    model = _saved_model(tmp_path)
    loaded, found = modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert found.epoch == 4 and found.params.beta == 0.5 and found.selection == modelfile.Selection("loss", 123.0)
    assert found.provenance.device == "cpu" and found.latent_kl == (1.0, 2.0, 3.0) and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    record = torch.load(tmp_path / "model.pt", weights_only=True)  # plain data: no project code needed
    assert record["model_config"] == {"latent_dim": 3, "dropout": 0.1} and record["architecture"] == ARCHITECTURE
    assert "eval" not in record["params"] and record["params"]["beta"] == 0.5


def test_a_model_file_of_the_previous_format_still_loads(tmp_path):
    """Format 2 (the reference run's until format 3): no selection, no provenance, fewer params."""
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.1))
    params = Params().training()
    for newer in ("train_samples", "select", "cuda_graphs"):
        params.pop(newer)
    del params["data"]["binarize"]  # older still: before binarized MNIST
    atomic.write_torch(tmp_path / "model.pt", {
        "format": "betavae-model/2", "architecture": ARCHITECTURE, "model_config": model.config.__dict__,
        "params": params, "epoch": 7, "val_loss": 99.5, "latent_kl": [0.1, 0.2, 0.3], "model": model.state_dict()})
    found = modelfile.ModelFile.read(tmp_path / "model.pt")
    assert found.selection == modelfile.Selection("loss", 99.5) and found.provenance is None
    assert found.params == Params()  # what it lacks reads as the defaults, which is how it trained
    rewritten = modelfile.ModelFile.read(tmp_path / "model.pt").to_record()
    assert rewritten["format"] == modelfile.MODEL_FORMAT and rewritten["selection"] == {"metric": "loss", "value": 99.5}


def test_same_model_file_is_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    _saved_model(tmp_path)
    first = (tmp_path / "model.pt").read_bytes()
    torch.manual_seed(0)
    _saved_model(tmp_path)
    assert (tmp_path / "model.pt").read_bytes() == first


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.unlink(), "no such file"),
    (lambda path: path.write_bytes(path.read_bytes()[:1000]), "unreadable, truncated or not a torch checkpoint"),
    (lambda path: path.write_bytes(b"hello"), "unreadable, truncated or not a torch checkpoint"),
])
def test_missing_or_truncated_model_file_is_one_clear_error(tmp_path, damage, message):
    _saved_model(tmp_path)
    damage(tmp_path / "model.pt")
    with pytest.raises(modelfile.CheckpointError, match=message):
        modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))


def test_model_file_of_another_architecture_or_kind_is_refused(tmp_path):
    _saved_model(tmp_path, architecture="conv-beta-vae/0")
    with pytest.raises(modelfile.CheckpointError, match="written for model 'conv-beta-vae/0'"):
        modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))
    _saved_model(tmp_path, format=resume.FORMAT)
    expected = " or ".join(repr(name) for name in (modelfile.MODEL_FORMAT, *modelfile.OLDER_FORMATS))
    with pytest.raises(modelfile.CheckpointError, match=f"expected {expected}"):
        modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))


@pytest.mark.parametrize("overrides, message", [
    ({"model_config": {"latent_dim": 5, "dropout": 0.1}}, "weights do not fit the model"),
    ({"latent_kl": [1.0]}, "1 latent KL values for 3 latent dimensions"),
    ({"params": {"beta": -1.0}}, "not a complete model file .*beta must be >= 0"),
    ({"params": {"bta": 1.0}}, "not a complete model file .*unknown key bta"),
    ({"selection": None}, "not a complete model file"),
    ({"model": {"encoder.0.0.weight": "text"}}, "not a complete model file"),
])
def test_a_model_file_that_does_not_hold_together_is_refused(tmp_path, overrides, message):
    _saved_model(tmp_path, **overrides)
    with pytest.raises(modelfile.CheckpointError, match=message):
        modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))


def test_pickled_code_in_a_checkpoint_is_refused_for_safety_naming_it(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    torch.save({"format": modelfile.MODEL_FORMAT, "x": Evil()}, tmp_path / "model.pt")
    with pytest.raises(modelfile.CheckpointError) as error:
        modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert re.search(r"refused for safety: the file references code \((builtins\.)?print\)", str(error.value))
    assert "weights_only" not in str(error.value) and "executed" not in capsys.readouterr().out


def test_training_memory_is_estimated_without_allocating_and_grows_with_the_run():
    small = training_memory_bytes(ModelConfig(latent_dim=32, dropout=0.1), 256)
    assert 50e6 < small < 1e9
    large = training_memory_bytes(ModelConfig(latent_dim=65_536, dropout=0.1), 256)
    assert large > 20 * small  # the latent layers dominate
    assert training_memory_bytes(ModelConfig(latent_dim=32, dropout=0.1), 2560) > 5 * small


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_allocates():
    with pytest.raises(runtime.DeviceError, match=r"training with z_dim 9 needs about [0-9.]+ GiB of memory, more "
                                                  r"than the [0-9.]+ GiB free on cpu"):
        runtime.check_memory(10**15, "training with z_dim 9", torch.device("cpu"))
    runtime.check_memory(1, "a tiny run", torch.device("cpu"))


@pytest.mark.parametrize("latent_dim, batch_size, samples", [(32, 256, 1), (4, 32, 3), (1, 2, 1), (200, 96, 5)])
def test_the_memory_estimate_counts_every_layers_output_for_the_whole_batch(latent_dim, batch_size, samples):
    """The estimate scales one image's count; the reference here runs the whole batch on the meta device."""
    config = ModelConfig(latent_dim=latent_dim, dropout=0.1)
    with torch.device("meta"):
        model, outputs = ConvVAE(config), []
        for module in model.modules():
            if not list(module.children()):
                module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
        model(torch.empty(batch_size, 1, 28, 28), samples)
    parameters = sum(p.numel() for p in model.parameters())
    activations = sum(t.numel() for output in outputs for t in (output if isinstance(output, tuple) else (output,)))
    state = torch.get_rng_state()
    assert training_memory_bytes(config, batch_size, samples) == 4 * (4 * parameters + 2 * activations)
    assert torch.equal(torch.get_rng_state(), state)  # counting draws no random numbers of the run's
