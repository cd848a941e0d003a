"""Data-parallel training (betavae/distributed.py): shards, gradients, failures and resume, with
torchrun and gloo on the CPU."""

import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from betavae.augment import random_affine
from betavae.data import to_float
from betavae.distributed import World
from betavae.params import ParamsError, parse_params

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.parametrize("size", [1, 2, 4])
def test_the_shards_of_every_process_put_back_together_are_the_single_process_batch(size):
    images = (torch.rand(64, 28, 28) * 255).to(torch.uint8)
    batch = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32]

    def augmented(world: World) -> torch.Tensor:
        share = world.share(len(batch))
        return random_affine(to_float(images[batch[share]]), 10.0, 0.1, torch.Generator().manual_seed(5),
                             batch_size=len(batch), share=share)

    single = augmented(World())
    shards = [augmented(World(rank=rank, size=size)) for rank in range(size)]
    assert all(len(shard) == 32 // size for shard in shards)
    assert torch.equal(torch.cat(shards), single)


def test_a_batch_the_processes_cannot_share_equally_is_refused_naming_the_key():
    launcher = "torchrun --standalone --nproc-per-node 3"
    with pytest.raises(ParamsError, match="batch_size must be divisible by the 3 processes the launcher starts"):
        parse_params({"launcher": launcher, "batch_size": 256})
    assert parse_params({"launcher": launcher, "batch_size": 255}).world_size == 3
    assert parse_params({"launcher": "torchrun --nnodes=2 --nproc-per-node 4", "batch_size": 256}).world_size == 8
    assert parse_params({"launcher": "torchrun --nproc-per-node gpu"}).world_size is None
    slurm = "srun --ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES --nproc-per-node 4 --rdzv-backend c10d"
    assert parse_params({"launcher": slurm}).world_size is None


# Run under torchrun by the test below: a twin of the model without batch norm or dropout, whose DDP
# gradient on each process's shard must equal the gradient of one process on the whole batch.
GRADIENT_CHECK = """
import torch, torch.distributed as dist
from torch import nn
from betavae import distributed
from betavae.loss import beta_vae_loss
from betavae.model import ConvVAE, ModelConfig

def twin():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=4, dropout=0.0))
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, name, nn.Identity())
    return model

def gradient(model, forward, x):
    mu, logvar = model.encode(x)  # the posterior mean as the sample: no noise to differ between processes
    logits = forward(x)
    beta_vae_loss(logits, x, mu, logvar, 0.8).loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

class Decoded(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
    def forward(self, x):
        return self.model.decode(self.model.encode(x)[0])

world = distributed.world_from_environment()
distributed.start(world, torch.device("cpu"))
x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
model = twin()
ddp = distributed.wrap(Decoded(model), world, torch.device("cpu"))
shard = gradient(model, ddp, x[world.share(32)])
single_model = twin()
single = gradient(single_model, Decoded(single_model), x)
assert torch.allclose(shard, single, rtol=1e-5, atol=1e-7), (shard - single).abs().max()
print(f"rank {world.rank}: max abs difference {(shard - single).abs().max().item():.2e} "
      f"over gradients up to {single.abs().max().item():.1f}")
distributed.stop(world)
"""


def test_the_ddp_gradient_equals_the_single_process_gradient_on_the_union_of_the_shards(tmp_path, repo_root, run):
    script = tmp_path / "gradient_check.py"
    script.write_text(GRADIENT_CHECK)
    result = run([*TORCHRUN, str(script)], repo_root, _environment())
    assert result.stdout.count("max abs difference") == 2, result.stdout


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_command(root, params):
    return [*TORCHRUN, "-m", "stages.train", "--params", str(params), "--data", str(root / "mnist"),
            "--model", str(root / "model.pt"), "--checkpoint", str(root / "checkpoint.pt"),
            "--live", str(root / "live")]


@pytest.fixture
def workspace(tmp_path, make_mnist, tiny):
    make_mnist(tmp_path / "mnist")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny(epochs=4, launcher="torchrun --standalone --nproc-per-node 2")))
    return tmp_path, params


# Stage train under torchrun, with the loss of process 1 poisoned at one step of epoch 2.
POISONED_TRAIN = """
import runpy, sys, torch
import betavae.train as training
real, calls = training.beta_vae_loss, {"n": 0}
def poisoned(*args, **kwargs):
    calls["n"] += 1
    terms = real(*args, **kwargs)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return terms._replace(loss=terms.loss * float("nan")) if rank == 1 and calls["n"] == 13 else terms
training.beta_vae_loss = poisoned
sys.argv = ["stages.train", *sys.argv[1:]]
runpy.run_module("stages.train", run_name="__main__")
"""


def test_a_non_finite_loss_in_one_process_stops_every_process_with_one_line(workspace, repo_root, run):
    root, params = workspace
    script = root / "poisoned.py"
    script.write_text(POISONED_TRAIN)
    command = _train_command(root, params)
    # A script, unlike `-m`, does not put the working directory on the path: the stages live there.
    environment = {**_environment(), "PYTHONPATH": str(repo_root)}
    result = run([*TORCHRUN, str(script), *command[command.index("--params"):]], repo_root, environment,
                 check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert errors == ["train: error: loss became non-finite at epoch 2, batch 3 of 10; the checkpoint of "
                      "epoch 1 is kept (lower max_lr or grad_clip and rerun)"], result.stderr[-3000:]
    assert not (root / "model.pt").exists()
    assert torch.load(root / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_two_processes_killed_then_rerun_resume_to_the_bytes_of_an_uninterrupted_run(workspace, repo_root, run,
                                                                                   kill_tree):
    root, params = workspace
    straight = root / "straight"
    straight.mkdir()
    (straight / "mnist").symlink_to(root / "mnist")
    finished = run(_train_command(straight, params), repo_root, _environment())
    assert finished.stdout.count("model written to") == 1  # process 0 alone reports and writes

    process = subprocess.Popen(_train_command(root, params), cwd=repo_root, env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (root / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    kill_tree(process)  # torchrun and both workers, like a power cut
    assert not (root / "model.pt").exists(), "training finished before it could be killed"

    resumed = run(_train_command(root, params), repo_root, _environment())
    assert "resuming from" in resumed.stdout
    assert (root / "model.pt").read_bytes() == (straight / "model.pt").read_bytes()
    for logged in ("plots/metrics/val/loss.tsv", "plots/images/samples/4.png"):
        assert (root / "live" / logged).read_bytes() == (straight / "live" / logged).read_bytes()


def test_a_checkpoint_of_two_processes_is_not_resumed_by_one(workspace, repo_root, run, tiny, kill_tree):
    root, params = workspace
    process = subprocess.Popen(_train_command(root, params), cwd=repo_root, env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (root / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.01)
    kill_tree(process)
    params.write_text(yaml.safe_dump(tiny(epochs=4)))  # launcher: python
    command = [sys.executable, *_train_command(root, params)[len(TORCHRUN):], "--resume", "require"]
    result = run(command, repo_root, _environment(), check=False)
    assert result.stderr.strip().splitlines()[-1] == ("train: error: cannot resume: checkpoint was written "
                                                      "with different params (launcher)")
