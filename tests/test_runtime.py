"""Process settings that change speed only: the allocator setting must work and leave results alone."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Page faults in one forward + backward pass of the model on 128 images (median of 5), and a digest
# of the gradients, in a fresh interpreter: the setting is process-wide and cannot be undone here.
CHILD = """
import hashlib, resource, sys, torch
from betavae import runtime
from betavae.model import ConvVAE, ModelConfig
applied = runtime.retain_freed_memory() if sys.argv[1] == "retain" else False
torch.manual_seed(0)
model, x = ConvVAE(ModelConfig()), torch.rand(128, 1, 28, 28)
def step():
    model.zero_grad(set_to_none=False)
    logits, mu, logvar = model(x)
    (logits.square().mean() + mu.square().mean()).backward()
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
step(); step()  # the heap grows to its working size
faults = sorted(faults_of_one_step() for _ in range(5))[2]  # median: a step may still grow the heap
digest = hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in model.parameters())).hexdigest()
print(applied, faults, digest)
"""


def _child(mode: str) -> tuple[str, float, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1]), out[2]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's mallopt")
def test_retaining_freed_memory_stops_the_page_faults_and_changes_no_result():
    applied_default, faults_default, digest_default = _child("default")
    applied, faults, digest = _child("retain")
    assert (applied_default, applied) == ("False", "True")
    assert faults <= max(100.0, faults_default / 10), (faults, faults_default)
    assert digest == digest_default
