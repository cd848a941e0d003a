"""Process settings that change speed only must leave results alone (their speed is measured by
benchmarks/train_speed.py, not here)."""

import platform
import subprocess
import sys

import pytest
import torch

from betavae.speed import runtime

# A digest of the gradients of one forward + backward pass, in a fresh interpreter: the allocator
# setting is process-wide and cannot be undone in this one.
CHILD = """
import hashlib, sys, torch
from betavae.speed import runtime
from betavae.core.model import ConvVAE, ModelConfig
applied = runtime.retain_freed_memory() if sys.argv[1] == "retain" else False
torch.manual_seed(0)
model, x = ConvVAE(ModelConfig(latent_dim=32, dropout=0.1)), torch.rand(64, 1, 28, 28)
for _ in range(3):
    model.zero_grad(set_to_none=False)
    logits, mu, logvar, _ = model(x)
    (logits.square().mean() + mu.square().mean()).backward()
print(applied, hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in model.parameters())).hexdigest())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's mallopt")
def test_retaining_freed_memory_is_applied_and_changes_no_result(repo_root):
    def child(mode: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", CHILD, mode], cwd=repo_root, capture_output=True, text=True,
                              check=True).stdout.split()

    (applied_default, digest_default), (applied, digest) = child("default"), child("retain")
    assert (applied_default, applied) == ("False", "True")
    assert digest == digest_default


DETERMINISM = """
import sys, torch
from betavae.speed import runtime
for device in ("cpu", "cuda"):
    runtime.make_deterministic(0, torch.device(device))
    print(device, torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
          "torch._dynamo" in sys.modules)
runtime.compiled(lambda x: x + 1)  # compiled when first called, which this does not do
import torch._inductor.config
print(torch._inductor.config.deterministic)
"""


def test_deterministic_kernels_are_asked_for_without_loading_the_compiler(repo_root):
    """What make_deterministic does instead of torch.use_deterministic_algorithms (which imports
    TorchDynamo to set the compiler's flag): the same switch, and the compiler's flag where it is used.
    On CUDA, kernels without a deterministic version warn rather than fail. One process asks for both
    devices, as the compiler's import is most of its time."""
    shown = subprocess.run([sys.executable, "-c", DETERMINISM], cwd=repo_root, capture_output=True,
                           text=True, check=True).stdout.split()
    assert shown == ["cpu", "True", "False", "False", "cuda", "True", "True", "False", "True"]


@pytest.mark.parametrize("setting, message", [
    (runtime.PARAMS_DEVICE, "device: cuda was requested, but CUDA is not available on this machine (use device: auto "
                            "or device: cpu in params.yaml)"),
    (runtime.COMMAND_LINE_DEVICE, "--device cuda was requested, but CUDA is not available on this machine (use "
                                  "--device auto or --device cpu)"),
    (runtime.API_DEVICE, 'device="cuda" was requested, but CUDA is not available on this machine (use '
                         'device="auto" or device="cpu")'),
])
def test_cuda_without_cuda_is_refused_naming_the_setting_as_its_caller_writes_it(setting, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runtime.DeviceError) as error:
        runtime.resolve_device("cuda", setting)
    assert str(error.value) == message
    assert runtime.resolve_device("auto", setting) == torch.device("cpu")


def test_an_unknown_device_names_the_choices_in_the_callers_spelling():
    with pytest.raises(runtime.DeviceError) as error:
        runtime.resolve_device("tpu", runtime.COMMAND_LINE_DEVICE)
    assert str(error.value) == ("--device tpu is not a device this project runs on (use --device auto, --device cpu "
                                "or --device cuda)")
