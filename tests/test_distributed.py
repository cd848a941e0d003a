"""Data-parallel training (betavae/training/distributed.py, betavae/pipeline/launch.py): how the launcher is read,
shards, gradients, failures and resume, with torchrun and gloo on the CPU."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betavae.core.data import Split
from betavae.core.model import ConvVAE, ModelConfig
from betavae.pipeline import launch
from betavae.pipeline.params import PARAMS_FILE, ParamsError, parse_params
from betavae.speed import runtime
from betavae.training.distributed import World
from betavae.training.state import Trainer
from betavae.training.step import Step

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _first_step_images(world: World, **overrides) -> torch.Tensor:
    """The images a process's first training step feeds the model (its share of the batch)."""
    launcher = "python" if world.size == 1 else f"torchrun --standalone --nproc-per-node {world.size}"
    params = parse_params({"batch_size": 32, "data": {"limit": 200, "val_size": 50}, "launcher": launcher,
                           "augment": {"rotation": 10.0, "translate": 0.1}, **overrides})
    images = (torch.rand(200, 28, 28, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    model = ConvVAE(ModelConfig(latent_dim=4, dropout=0.0))
    seen = []
    trainer = Trainer(params, runtime.resolve("cpu", "fp32", channels_last=False), world, model,
                      lambda x, samples: (seen.append(x), model(x, samples))[1],
                      torch.optim.AdamW(model.parameters()), torch.Generator().manual_seed(params.seed),
                      Split(images[:150], torch.zeros(150, dtype=torch.long)), Split(images[150:], torch.zeros(50)))
    step = Step(trainer, capture=False)
    step.start_epoch(1)
    step()
    return seen[0]


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_the_shards_of_every_process_put_back_together_are_the_single_process_batch(size, binarize):
    """Each process draws the augmentation and binarization for the whole batch and keeps its share."""
    single = _first_step_images(World(), data={"limit": 200, "val_size": 50, "binarize": binarize})
    shards = [_first_step_images(World(rank=rank, size=size), data={"limit": 200, "val_size": 50,
                                                                     "binarize": binarize})
              for rank in range(size)]
    assert all(len(shard) == 32 // size for shard in shards)
    assert torch.equal(torch.cat(shards), single)
    assert (binarize == "dynamic") == (set(single.unique().tolist()) <= {0.0, 1.0})


def test_a_batch_the_processes_cannot_share_equally_is_refused_naming_the_key():
    launcher = "torchrun --standalone --nproc-per-node 3"
    with pytest.raises(ParamsError, match="batch_size must be divisible by the 3 processes the launcher starts"):
        parse_params({"launcher": launcher, "batch_size": 256})
    assert parse_params({"launcher": launcher, "batch_size": 255}).world_size == 3
    two_nodes = "torchrun --nnodes=2 --nproc-per-node 4 --rdzv-endpoint head:29500"
    assert parse_params({"launcher": two_nodes, "batch_size": 256}).world_size == 8
    assert parse_params({"launcher": "torchrun --nproc-per-node gpu"}).world_size is None
    slurm = ("srun --ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES --nproc-per-node 4 --rdzv-backend c10d "
             "--rdzv-endpoint $HEAD:29500")
    assert parse_params({"launcher": slurm}).world_size is None


@pytest.mark.parametrize("value, message", [
    ("python; touch PWNED", "must be `python`, or `[srun OPTIONS] torchrun OPTIONS`"),
    ("torchrun --standalone --nproc-per-node 2; touch PWNED", "torchrun option --nproc-per-node '2;': must be"),
    ("torchrun --standalone --nproc-per-node 2 ; touch PWNED", "torchrun: ';' is not an option"),
    ("torchrun --no-python --nproc-per-node 2", "torchrun option '--no-python' is not accepted"),
    ("torchrun --run-path x.py", "torchrun option '--run-path' is not accepted"),
    ("torchrun --standalone evil.py", "torchrun: 'evil.py' is not an option; the program to run is fixed"),
    ("bash -c 'torchrun'", "only `srun` may come before torchrun, not 'bash'"),
    ("srun --prolog=/tmp/x torchrun", "srun option '--prolog' is not accepted"),
    ("torchrun --nproc-per-node", "torchrun option '--nproc-per-node' needs a value"),
    ("torchrun --standalone=1", "torchrun option --standalone takes no value"),
    ("torchrun 'unclosed", "cannot be split into words"),
])
def test_a_launcher_that_could_run_anything_else_is_refused_before_anything_starts(value, message):
    with pytest.raises(launch.LauncherError, match=message.replace("(", r"\(").replace("[", r"\[")):
        launch.parse(value)


@pytest.mark.parametrize("value, message", [
    ("torchrun --standalone --nproc-per-node=-1", "--nproc-per-node '-1': must be a positive number of processes"),
    ("torchrun --standalone --nproc-per-node -1", "--nproc-per-node '-1': must be a positive number of processes"),
    ("torchrun --standalone --nproc-per-node 0", "--nproc-per-node '0': must be a positive number"),
    ("torchrun --nnodes 0 --nproc-per-node 2", "--nnodes '0': must be a number of nodes"),
    ("torchrun --nnodes 4:2 --rdzv-endpoint h:1", "--nnodes 4:2: MIN must not exceed MAX"),
    ("torchrun --standalone --max-restarts=-3", "--max-restarts '-3': must be a number of restarts"),
    ("torchrun --standalone --monitor-interval soon", "--monitor-interval 'soon': must be a number of seconds"),
    ("torchrun --nnodes 2 --master-addr h --master-port 70000", "--master-port 70000: a port must be 1 to 65535"),
    ("torchrun --nnodes 2 --rdzv-backend zookeeper --rdzv-endpoint h:1", "--rdzv-backend 'zookeeper': must be c10d"),
    ("torchrun --nnodes 2 --nproc-per-node 4", "--nnodes 2 needs --rdzv-endpoint HOST:PORT (or --master-addr)"),
    ("torchrun --nnodes 1:4 --nproc-per-node 4", "--nnodes 1:4 needs --rdzv-endpoint"),
    ("torchrun --nnodes 2 --standalone", "--standalone runs on one machine, but --nnodes asks for several"),
    ("torchrun --nnodes 2 --rdzv-endpoint h:29500 --node-rank 5", "--node-rank 5 must be below --nnodes 2"),
    ("torchrun --nnodes 2 --rdzv-endpoint h:1 --rdzv-conf join_timeout=0", "join_timeout=0: the nodes may wait 1"),
    ("torchrun --standalone --redirects 7", "--redirects '7': must be 0 to 3"),
    ("srun --ntasks=-2 torchrun --standalone", "srun option --ntasks '-2': must be a positive number"),
    ("srun --partition 'a b' torchrun --standalone", "srun option --partition 'a b': must be one word"),
])
def test_a_launcher_value_that_cannot_start_a_run_is_refused_where_params_are_checked(value, message):
    with pytest.raises(ParamsError, match=f"launcher is not usable: .*{re.escape(message)}"):
        parse_params({"launcher": value})


def test_a_launcher_becomes_an_argument_list_with_variables_looked_up_not_evaluated():
    slurm = launch.parse("srun -N 2 --ntasks-per-node=1 torchrun --nnodes $NODES --nproc_per_node 4 "
                         "--rdzv-endpoint ${HEAD}:29500")
    environ = {"NODES": "2", "HEAD": "node-a"}
    assert slurm.srun_arguments(environ) == ["-N", "2", "--ntasks-per-node=1"]
    assert slurm.torchrun_arguments(environ) == ["--nnodes=2", "--nproc-per-node=4", "--rdzv-endpoint=node-a:29500"]
    assert "waiting for 2 nodes to meet at node-a:29500" in slurm.meeting(environ)
    with pytest.raises(launch.LauncherError, match=r"--rdzv-endpoint 'node-a; touch PWNED:29500': must be HOST"):
        slurm.torchrun_arguments({**environ, "HEAD": "node-a; touch PWNED"})  # a variable's value is checked too
    with pytest.raises(launch.LauncherError, match=r"--nnodes '-1': must be"):
        slurm.torchrun_arguments({**environ, "NODES": "-1"})
    assert launch.srun_command(slurm, "stages.train", ["--data", "d"], environ) == [
        "srun", "-N", "2", "--ntasks-per-node=1", sys.executable, "-m", "stages.train", "--data", "d"]
    with pytest.raises(launch.LauncherError, match=r"launcher names \$NODES, which is not set"):
        slurm.torchrun_arguments({})
    assert launch.needs_srun(slurm, {}) and not launch.needs_srun(slurm, {launch.SRUN_STEP_VARIABLE: "1"})
    assert launch.is_launcher_process(slurm, {}) and not launch.is_launcher_process(slurm, {"LOCAL_RANK": "0"})
    assert not launch.is_launcher_process(launch.parse("python"), {})


# Run under torchrun by the test below: a twin of the model without batch norm or dropout, whose DDP
# gradient on each process's shard must equal the gradient of one process on the whole batch.
GRADIENT_CHECK = """
import torch, torch.distributed as dist
from torch import nn
from betavae.training import distributed
from betavae.core.objective import beta_vae_loss
from betavae.core.model import ConvVAE, ModelConfig

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
distributed.join(world, torch.device("cpu"))
x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
model = twin()
ddp = distributed.wrap(Decoded(model), world, torch.device("cpu"))
shard = gradient(model, ddp, x[world.share(32)])
single_model = twin()
single = gradient(single_model, Decoded(single_model), x)
assert torch.allclose(shard, single, rtol=1e-5, atol=1e-7), (shard - single).abs().max()
print(f"rank {world.rank}: max abs difference {(shard - single).abs().max().item():.2e} "
      f"over gradients up to {single.abs().max().item():.1f}")
distributed.leave(world)
"""


@pytest.mark.slow
def test_the_ddp_gradient_equals_the_single_process_gradient_on_the_union_of_the_shards(tmp_path, repo_root, run):
    script = tmp_path / "gradient_check.py"
    script.write_text(GRADIENT_CHECK)
    result = run([*TORCHRUN, str(script)], repo_root, _environment())
    assert result.stdout.count("max abs difference") == 2, result.stdout


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


TWO_PROCESSES = "torchrun --standalone --nproc-per-node 2"


@pytest.fixture
def two_process_run(stage_dir, yaml_text, tiny):
    """stage_dir with params that train 4 epochs on two processes."""
    stage_dir.params.write_text(yaml_text(tiny(epochs=4, launcher=TWO_PROCESSES)))
    return stage_dir


def _start(command, repo_root) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=repo_root, env=_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# Stage train under torchrun, with the loss of process 1 poisoned at one step of epoch 2.
POISONED_TRAIN = """
import os, runpy, sys, torch
from betavae.training import step
real, calls, poisoned_call = step.training_loss, {"n": 0}, int(os.environ["POISONED_CALL"])
def poisoned(*args, **kwargs):
    calls["n"] += 1
    terms = real(*args, **kwargs)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return terms._replace(loss=terms.loss * float("nan")) if rank == 1 and calls["n"] == poisoned_call else terms
step.training_loss = poisoned
sys.argv = ["stages.train", *sys.argv[1:]]
runpy.run_module("stages.train", run_name="__main__")
"""


@pytest.mark.slow
def test_a_non_finite_loss_in_one_process_stops_every_process_with_one_line(two_process_run, repo_root, run,
                                                                           steps_per_epoch):
    root = two_process_run.root
    script = root / "poisoned.py"
    script.write_text(POISONED_TRAIN)
    steps = steps_per_epoch(epochs=4)
    # A script, unlike `-m`, does not put the working directory on the path: the stages live there.
    environment = {**_environment(), "PYTHONPATH": str(repo_root), "POISONED_CALL": str(steps + 3)}
    result = run([*TORCHRUN, str(script), *two_process_run.train()], repo_root, environment, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert errors == [f"train: error: loss became non-finite at epoch 2, batch 3 of {steps}; the checkpoint of "
                      "epoch 1 is kept (lower max_lr or grad_clip and rerun)"], result.stderr[-3000:]
    assert not (root / "model.pt").exists()
    assert torch.load(root / "checkpoint.pt", weights_only=True)["epoch"] == 1


def _workers(process: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the training processes torchrun started under process."""
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(item.split("=", 1) for item in environ.read_bytes().decode().split("\0") if "=" in item)
        except (OSError, UnicodeDecodeError):
            continue
        if variables.get("TORCHELASTIC_RUN_ID") and "RANK" in variables and _descends(int(environ.parent.name),
                                                                                      process.pid):
            found[int(variables["RANK"])] = int(environ.parent.name)
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_process_ends_the_run_in_one_line_naming_it_and_the_rerun_resumes(
        two_process_run, repo_root, stage_command, until, killed):
    root = two_process_run.root
    process = _start(stage_command("train", two_process_run.train()), repo_root)
    until((root / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    until(lambda: len(_workers(process)) == 2, "two training processes", process=process, every_s=0.2)  # scans /proc
    os.kill(_workers(process)[killed], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"train: error: process {killed} of 2 \(pid \d+\) was killed by SIGKILL; torchrun "
                        rf"stopped the others; completed epochs are saved in {re.escape(str(root))}/checkpoint.pt; "
                        r"run `python -m stages.train --params .*` again to resume", last), last
    assert [line for line in stderr.splitlines() if "error" in line.lower()] == [last], stderr[-3000:]
    resumed = subprocess.run(stage_command("train", two_process_run.train()), cwd=repo_root, env=_environment(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_killed_then_rerun_resume_to_the_bytes_of_an_uninterrupted_run(
        two_process_run, repo_root, stage_command, run, kill_tree, until, tmp_path_factory):
    root = two_process_run.root
    straight = two_process_run.__class__(tmp_path_factory.mktemp("straight"))
    (straight.root / "mnist").symlink_to(root / "mnist")
    (straight.root / PARAMS_FILE).write_bytes(two_process_run.params.read_bytes())
    finished = run(stage_command("train", straight.train()), repo_root, _environment())
    assert "train: starting torchrun --standalone --nproc-per-node=2 -m stages.train" in finished.stdout
    assert finished.stdout.count("model written to") == 1  # process 0 alone reports and writes

    process = _start(stage_command("train", two_process_run.train()), repo_root)
    until((root / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    kill_tree(process)  # the stage, torchrun's agent in it and both workers, like a power cut
    assert not (root / "model.pt").exists(), "training finished before it could be killed"

    resumed = run(stage_command("train", two_process_run.train()), repo_root, _environment())
    assert "resuming from" in resumed.stdout
    assert (root / "model.pt").read_bytes() == (straight.root / "model.pt").read_bytes()
    for logged in ("plots/metrics/val/loss.tsv", "plots/images/samples/4.png"):
        assert (root / "live" / logged).read_bytes() == (straight.root / "live" / logged).read_bytes()


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_is_not_resumed_by_one(two_process_run, repo_root, stage_command, run,
                                                             kill_tree, until, yaml_text, tiny):
    root = two_process_run.root
    process = _start(stage_command("train", two_process_run.train()), repo_root)
    until((root / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    kill_tree(process)
    two_process_run.params.write_text(yaml_text(tiny(epochs=4)))  # launcher: python
    result = run(stage_command("train", two_process_run.train("--resume", "require")), repo_root, _environment(),
                 check=False)
    assert result.stderr.strip().splitlines()[-1] == ("train: error: cannot resume: checkpoint was written "
                                                      "with different params (launcher)")
