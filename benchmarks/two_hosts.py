"""Time per epoch of one training run on two hosts, against the same two processes on one host and
against one process.

    python benchmarks/two_hosts.py              # about ten minutes; as root (it makes network namespaces)

Two hosts are made on this machine as network namespaces joined by a veth pair (host-a 10.231.1.1 and
host-b 10.231.1.2, a private test range that exists only inside them), each with its own host name.
The train stage runs as DVC would start it, without DVC, with the committed params but --limit
training images (a tenth of them held out), --epochs epochs and the CPU, three ways:

  one process       launcher python, on host-a
  one host          `torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint
                    host-a:29400`, both nodes on host-a
  two hosts         the same launcher, one node on each host: DDP's gradients cross the link

Every process runs one thread (OMP_NUM_THREADS=1) and both hosts share this machine's cores, so the
two-host figure is what the network costs a step, not what a second machine adds. The ways run
--rounds times, interleaved; the time per epoch is the median of DVCLive's epoch_seconds over the
rounds' epochs after each run's first (which also warms up). Writes reports/bench/two_hosts.json
(or --out); scripts/readme_results.py writes its table into docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script

from betavae import errors
from betavae.errors import ArgumentParser, BetaVAEError, integer_in, output_file
from betavae.pipeline import atomic, yamlfile

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.231.1"
PORT = 29400
LAUNCHER = (f"torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint host-a:{PORT} "
            "--rdzv-conf join_timeout=120")
WAYS = {  # name: (launcher, the hosts its nodes run on); scripts/readme_results.py's TWO_HOSTS_WAYS
    "one process": ("python", ("a",)),
    "one host": (LAUNCHER, ("a", "a")),
    "two hosts": (LAUNCHER, ("a", "b")),
}
RUN_TIMEOUT_S = 3600


class BenchmarkError(BetaVAEError):
    pass


def main() -> None:
    errors.run(_main, "two_hosts")


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "mnist", help="MNIST IDX directory")
    parser.add_argument("--limit", type=integer_in(1000, 60_000), default=8_000, help="training images (data.limit)")
    parser.add_argument("--epochs", type=integer_in(2, 100), default=3)
    parser.add_argument("--rounds", type=integer_in(1, 20), default=2, help="runs of each way, interleaved")
    parser.add_argument("--out", type=output_file(".json"), default=REPO / "reports" / "bench" / "two_hosts.json")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise BenchmarkError("making hosts as network namespaces takes root and iproute2 (`ip`)")
    if not (args.data / "train-images-idx3-ubyte").is_file():
        raise BenchmarkError(f"no MNIST in {args.data} (`python -m stages.download --out data/mnist`)")
    record = {"machine": machine.describe(), "limit": args.limit, "epochs": args.epochs, "rounds": args.rounds,
              "threads_per_process": 1, "launcher": LAUNCHER,
              "ways": {way: {"processes": len(placed), "hosts": len(set(placed)), "epoch_seconds": []}
                       for way, (_, placed) in WAYS.items()}}
    with tempfile.TemporaryDirectory(prefix="betavae-two-hosts-") as scratch, _Hosts() as hosts:
        for round_ in range(args.rounds):  # the ways interleaved, as a shared machine's speed drifts
            for way, (launcher, placed) in WAYS.items():
                directory = Path(scratch) / f"{round_}-{way.replace(' ', '-')}"
                seconds = _train(hosts, directory, args, launcher, placed)
                record["ways"][way]["epoch_seconds"].append(seconds)
                errors.say(f"two_hosts: round {round_ + 1}, {way}: " + ", ".join(f"{s:.2f}" for s in seconds)
                           + " s per epoch")
    for found in record["ways"].values():
        found["median_s"] = statistics.median(s for seconds in found["epoch_seconds"] for s in seconds[1:])
    atomic.write_json(args.out, record)
    errors.say(f"two_hosts: written to {args.out}")
    errors.say("two_hosts: `python scripts/readme_results.py` writes its table into docs/scaling.md")


def _train(hosts: _Hosts, directory: Path, args, launcher: str, placed: tuple[str, ...]) -> list[float]:
    """Train once; DVCLive's epoch_seconds of the run (read from the live directory of the first node)."""
    params = yamlfile.read(REPO / "params.yaml")
    params.update({"epochs": args.epochs, "device": "cpu", "launcher": launcher})
    params["data"].update({"limit": args.limit, "val_size": max(500, args.limit // 10)})
    nodes = []
    for i, host in enumerate(placed):
        root = directory / f"node-{i}"
        root.mkdir(parents=True)
        (root / "params.yaml").write_text(_yaml(params))
        command = [sys.executable, "-m", "stages.train", "--params", str(root / "params.yaml"), "--data",
                   str(args.data), "--model", str(root / "model.pt"), "--checkpoint", str(root / "checkpoint.pt"),
                   "--live", str(root / "live"), "--resume", "never"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        nodes.append(subprocess.Popen(hosts.command(host, command), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for node in nodes:
        _, stderr = node.communicate(timeout=RUN_TIMEOUT_S)
        if node.returncode != 0:
            raise BenchmarkError(f"the {launcher!r} run failed: {errors.one_line(stderr.strip()[-300:])}")
    rows = (directory / "node-0" / "live" / "plots" / "metrics" / "epoch_seconds.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


def _yaml(data: dict) -> str:
    import io

    from ruamel.yaml import YAML

    buffer = io.StringIO()
    YAML().dump(data, buffer)
    return buffer.getvalue()


class _Hosts:
    """host-a and host-b: two network namespaces joined by a veth pair, names resolved from a hosts file
    of their own; removed on leaving, whatever happened."""

    def __init__(self):
        self.tag = f"bvbench{os.getpid() % 10**5}"

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def command(self, host: str, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host), "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', f"host-{host}", *args]

    def __enter__(self) -> _Hosts:
        try:
            for host in "ab":
                namespace = self.namespace(host)
                _ip("netns", "add", namespace)
                _ip("-n", namespace, "link", "set", "lo", "up")
                etc = Path("/etc/netns") / namespace
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(f"127.0.0.1 localhost\n{SUBNET}.1 host-a\n{SUBNET}.2 host-b\n")
                (etc / "nsswitch.conf").write_text("hosts: files\n")
                (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            _ip("link", "add", "eth0", "netns", self.namespace("a"), "type", "veth", "peer", "name", "eth0", "netns",
                self.namespace("b"))
            for i, host in enumerate("ab"):
                _ip("-n", self.namespace(host), "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
                _ip("-n", self.namespace(host), "link", "set", "eth0", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        for host in "ab":
            namespace = self.namespace(host)
            listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


if __name__ == "__main__":
    main()
