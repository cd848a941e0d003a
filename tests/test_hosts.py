"""Past one machine, for real: hosts that talk only over a network (network namespaces, the `hosts`
fixture of tests/conftest.py), each with its own clone: one training run over two hosts and the faults
between them, a search whose workers on two hosts share one study in PostgreSQL, and DVC's queue with
its workers."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from betavae import errors
from betavae.pipeline import launch, yamlfile

PORT = 29400
PEER_TIMEOUT_S = 10  # BETAVAE_PEER_TIMEOUT in these runs: how long a process waits for a silent peer
BOUND_S = 60  # the bound the faults must end within, counted from the fault
LOOK_S = 0.5  # between two looks at a host's processes (`ip netns pids`, a process, and a scan of /proc)
TWO_HOSTS = ("torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d "
             f"--rdzv-endpoint host-a:{PORT} --rdzv-conf join_timeout=60")
TRAINING = {"epochs": 3, "launcher": TWO_HOSTS}
REPRO = ["dvc", "repro", "train"]


def _environment(host) -> dict:
    return {**host.env, "BETAVAE_PEER_TIMEOUT": str(PEER_TIMEOUT_S)}


def _finish(processes) -> list:
    ended = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        ended.append((process.returncode, stdout, stderr))
    return ended


def _model(repo) -> bytes:
    return (repo / "models" / "model.pt").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(network, tmp_path_factory) -> bytes:
    """The model bytes of the tiny two-host run, uninterrupted (each test's hosts hold the same commit)."""
    with network(tmp_path_factory.mktemp("uninterrupted")) as made:
        hosts = made.make(2, **TRAINING)
        ended = _finish([host.start(REPRO, _environment(host)) for host in hosts])
        assert all(status == 0 for status, _, _ in ended), ended
        assert _model(hosts[0].repo) == _model(hosts[1].repo)  # each host's DVC run has the outputs
        for logged in ("metrics.json", "plots/metrics/val/loss.tsv"):
            assert len({(host.repo / "reports" / "train" / logged).read_bytes() for host in hosts}) == 1
        return _model(hosts[0].repo)


def _ended_within(process, bound_s: float, since: float):
    """(status, stdout, stderr) of a process that must end within bound_s of `since`: a deadline, not a sleep."""
    stdout, stderr = process.communicate(timeout=max(1.0, since + bound_s - time.monotonic()))
    return process.returncode, stdout, stderr


def _one_error_line(stderr: str) -> str:
    """The stage's one error line (DVC's own `ERROR: failed to reproduce 'train'` follows it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error" in line.lower() and not line.startswith("ERROR: ")]
    assert len(errors) == 1 and errors[0].startswith("train: error: "), stderr[-3000:]
    return errors[0]


def _nothing_half_written(repo: Path) -> None:
    assert not (repo / "models" / "model.pt").exists()
    assert not [path for path in repo.rglob("*") if re.fullmatch(r"\..*\.(\w{8}\.tmp|old)", path.name)]


def _resume_on_both(hosts, uninterrupted: bytes) -> None:
    ended = _finish([host.start(REPRO, _environment(host)) for host in hosts])
    assert all(status == 0 for status, _, _ in ended), ended
    assert "resuming from models/checkpoint.pt after epoch" in ended[0][1], ended[0][1][-3000:]
    assert _model(hosts[0].repo) == _model(hosts[1].repo) == uninterrupted


@pytest.mark.slow
def test_one_run_on_two_hosts_ends_with_the_bytes_of_the_same_two_processes_on_one_host(
        hosts, run, tmp_path, uninterrupted):
    """The two hosts' run is the module's `uninterrupted`; here the same two processes run on host-a alone,
    each in a clone of its own."""
    (a,) = hosts(1, **TRAINING)
    clones = [tmp_path / f"clone-{i}-on-host-a" for i in (1, 2)]
    for clone in clones:
        run(["git", "clone", "-q", str(a.repo), str(clone)], tmp_path)
    one_host = _finish([a.start(REPRO, _environment(a), cwd=clone) for clone in clones])
    assert all(status == 0 for status, _, _ in one_host), one_host
    assert _model(clones[0]) == _model(clones[1]) == uninterrupted


LOST = r"process {} of 2 \(pid \d+\) on this machine "
RESUME = (r"; torchrun stopped this machine's processes; completed epochs are saved in models/checkpoint.pt; run "
          r"`dvc repro train` again to resume, on every machine of the run")


@pytest.mark.slow
def test_a_host_killed_mid_epoch_stops_the_other_within_the_bound_and_both_resume_to_the_same_bytes(
        hosts, until, uninterrupted):
    a, b = hosts(2, **TRAINING)
    runs = [host.start(REPRO, _environment(host)) for host in (a, b)]
    until((a.repo / "models" / "checkpoint.pt").exists, "host-a's checkpoint of epoch 1", process=runs[0])
    b.kill()  # every process on host-b, SIGKILL, mid-epoch
    status, _, stderr = _ended_within(runs[0], BOUND_S, since=time.monotonic())
    assert status != 0
    # SIGKILL closes host-b's sockets with a reset where data was unread, else as an orderly close: either is the truth
    assert re.fullmatch(LOST.format(0) + r"lost its connection to 10\.231\.0\.2 \(Connection (reset|closed) by peer\): "
                        r"that machine's processes stopped or the network to it failed" + RESUME,
                        _one_error_line(stderr).removeprefix("train: error: ")), stderr[-2000:]
    runs[1].communicate()
    for host in (a, b):
        _nothing_half_written(host.repo)
    _resume_on_both((a, b), uninterrupted)


@pytest.mark.slow
def test_a_cut_link_stops_both_hosts_within_the_bound_and_both_resume_to_the_same_bytes(hosts, until, uninterrupted):
    a, b = hosts(2, **TRAINING)
    runs = [host.start(REPRO, _environment(host)) for host in (a, b)]
    until((a.repo / "models" / "checkpoint.pt").exists, "host-a's checkpoint of epoch 1", process=runs[0])
    b.cut()
    cut = time.monotonic()
    silence = (rf"heard nothing from the other processes for {PEER_TIMEOUT_S} s \(BETAVAE_PEER_TIMEOUT\): another "
               r"machine stopped or the network to it failed")
    for run, who in zip(runs, (LOST.format(0), LOST.format(1))):
        status, _, stderr = _ended_within(run, BOUND_S, since=cut)
        assert status != 0
        assert re.fullmatch(who + silence + RESUME, _one_error_line(stderr).removeprefix("train: error: ")), stderr
    b.mend()
    for host in (a, b):
        _nothing_half_written(host.repo)
    _resume_on_both((a, b), uninterrupted)


@pytest.mark.slow
def test_a_host_whose_clone_trains_other_params_stops_the_run_in_one_line_naming_them(hosts, yaml_text):
    a, b = hosts(2, **TRAINING)
    edited = {**yamlfile.read(b.repo / "params.yaml"), "beta": 2.0}
    (b.repo / "params.yaml").write_text(yaml_text(edited))  # host-b's params.yaml edited, not committed
    ended = _finish([host.start(REPRO, _environment(host)) for host in (a, b)])
    assert all(status != 0 for status, _, _ in ended)
    assert _one_error_line(ended[0][2]) == (
        "train: error: process 1 (on host-b) trains with other params than process 0 (on host-a): beta differ; every "
        "machine needs the same commit and params.yaml")
    assert _one_error_line(ended[1][2]).startswith(
        "train: error: process 1 of 2 stopped with an error, which process 0 reports on its machine; ")


# Two processes of a run that stop with their own errors; process 1 is still saying its error when torchrun's
# agent on host-a, done with its own process, has ended the run and so closed the rendezvous host-b's agent reads.
STILL_SAYING_IT = """
import os
import signal

from betavae import errors


def fail():
    raise errors.BetaVAEError("process 0 refuses the other's params")


def until_its_agent_stops_it():  # the agent, having lost the rendezvous, stops this machine's processes
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.sigwait({signal.SIGTERM})


errors.run(fail, "worker", on_failure=None if os.environ["RANK"] == "0" else until_its_agent_stops_it)
"""
LAUNCH = ("import sys; from betavae import errors; from betavae.pipeline import launch; "
          "errors.run(lambda: launch.run_torchrun(launch.parse(sys.argv[1]), 'still_saying_it', [], 'start it again'), "
          "'launch')")


@pytest.mark.slow
def test_a_process_still_saying_its_error_when_the_rendezvous_ends_is_said_as_its_error_in_one_line(hosts, tmp_path):
    """The race behind the other-params test, made certain: host-b's agent loses the rendezvous before its
    process has stopped; its line still says that process stopped with an error, and no C++ log appears."""
    a, b = hosts(2)
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "still_saying_it.py").write_text(STILL_SAYING_IT)
    ended = _finish([host.start([sys.executable, "-c", LAUNCH, TWO_HOSTS],
                                {**host.env, "PYTHONPATH": f"{tmp_path / 'workers'}{os.pathsep}{host.repo}"})
                     for host in (a, b)])
    assert [status for status, _, _ in ended] == [1, 1], ended
    assert ended[0][2].splitlines() == ["worker: error: process 0 refuses the other's params"], ended[0][2]
    assert ended[1][2].splitlines() == [
        "launch: error: process 1 of 2 stopped with an error, which process 0 reports on its machine; start it "
        "again, on every machine of the run"], ended[1][2]


@pytest.mark.slow
def test_a_host_that_never_comes_ends_the_run_in_one_line_within_the_rendezvous_timeout(hosts):
    join_timeout = 10
    (a,) = hosts(1, epochs=1, launcher=TWO_HOSTS.replace("join_timeout=60", f"join_timeout={join_timeout}"))
    started = time.monotonic()
    status, _, stderr = _ended_within(a.start(REPRO, _environment(a)), join_timeout + 30, since=started)
    assert status != 0
    assert _one_error_line(stderr) == (
        f"train: error: the 2 nodes did not all come to host-a:{PORT} within {join_timeout} s (--rdzv-conf "
        "join_timeout): start the run on every machine, each able to reach that address; completed epochs are "
        "saved in models/checkpoint.pt; run `dvc repro train` again to resume, on every machine of the run")


# --- A search whose workers on two hosts share one study in PostgreSQL (scripts/search.py) ----------------

SPACE = {"study": "hosts", "objectives": [{"metric": "test.kl", "direction": "minimize"},
                                          {"metric": "test.recon", "direction": "minimize"}],
         "params": {"beta": {"low": 0.5, "high": 2.0, "log": True}}, "fixed": {"epochs": 1},
         "sampler": {"name": "random", "seed": 0}}
HEARTBEAT_S = 2  # --heartbeat: a worker 3 heartbeats late (6 s) is lost
TRIALS_QUERY = """
import json, os, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="hosts", storage=os.environ["STUDY_URL"])
print(json.dumps([{"number": t.number, "state": t.state.name, "beta": t.params.get("beta"), "values": t.values,
                   "experiment": t.user_attrs.get("experiment"), "repeats": t.system_attrs.get("retry_history", [])}
                  for t in study.get_trials(deepcopy=False)]))
"""
OPEN_QUERY = """
import os
from betavae.experiments import studies
studies.open_study(studies.load_space("space.yaml"), os.environ["STUDY_URL"])
"""


def _searchers(hosts, database, yaml_text) -> None:
    """Each host ready to search: the space file in its clone, MNIST in its cache; the study made once."""
    for host in hosts:
        (host.repo / "space.yaml").write_text(yaml_text(SPACE))
        host.run(["dvc", "repro", "download"])
    hosts[0].run([sys.executable, "-c", OPEN_QUERY], {**hosts[0].env, "STUDY_URL": database.url})


def _search(host, database, trials: int):
    return host.start([sys.executable, "scripts/search.py", "--space", "space.yaml", "--trials", str(trials),
                       "--storage", database.url, "--remote", "origin", "--heartbeat", str(HEARTBEAT_S)])


def _trials(host, database) -> list[dict]:
    found = host.run([sys.executable, "-c", TRIALS_QUERY], {**host.env, "STUDY_URL": database.url})
    return json.loads(found.stdout)


def _running_experiment(host) -> bool:
    """Whether a `dvc exp run` is running on host (a trial's experiment)."""
    for pid in host.processes():
        with contextlib.suppress(OSError):
            if b"exp\0run" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


def _local_experiments(repo: Path) -> int:
    """How many experiments the clone holds (DVC keeps each as a git ref under refs/exps)."""
    return sum(1 for ref in (repo / ".git" / "refs" / "exps").rglob("*") if ref.is_file())


def _no_password(database, *outputs: str) -> None:
    assert not [text for text in outputs if database.password in text]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_on_one_host_has_its_trial_run_once_by_the_worker_on_the_other(
        hosts, postgres, yaml_text, until):
    a, b, c = hosts(3)
    database = postgres(c)
    _searchers((a, b), database, yaml_text)
    workers = [_search(a, database, 2), _search(b, database, 2)]
    until(lambda: _running_experiment(b), "host-b's trial", process=workers[1], every_s=LOOK_S)
    b.kill()  # the worker and its experiment, mid-trial
    status, stdout, stderr = _ended_within(workers[0], 600, since=time.monotonic())
    assert status == 0, stderr[-3000:]
    assert "stopped sending heartbeats: failed, and its params queued again as a new trial" in stdout, stdout
    _no_password(database, stdout, stderr, *workers[1].communicate())
    trials = _trials(a, database)
    (lost,) = [trial for trial in trials if trial["state"] == "FAIL"]
    complete = [trial for trial in trials if trial["state"] == "COMPLETE"]
    assert len(trials) == 3 and len(complete) == 2, trials
    assert [trial["beta"] for trial in complete if trial["repeats"] == [lost["number"]]] == [lost["beta"]]
    assert _local_experiments(a.repo) == 2 and _local_experiments(b.repo) == 0  # each trial ran to the end once


@pytest.mark.slow
def test_two_hosts_share_a_study_across_a_database_restart_and_their_experiments_meet_in_one_clone(
        hosts, postgres, yaml_text, until, run):
    a, b, c = hosts(3)
    database = postgres(c)
    _searchers((a, b), database, yaml_text)
    workers = [_search(host, database, 2) for host in (a, b)]
    until(lambda: _running_experiment(a) and _running_experiment(b), "a trial on each host", process=workers[0],
          every_s=LOOK_S)
    database.stop()
    for worker in workers:
        status, stdout, stderr = _ended_within(worker, 300, since=time.monotonic())
        assert status == 1 and "Traceback" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith("search: error: the study's database "), stderr
        assert f"{c.address}\", port {database.port} failed" in stderr, stderr
        _no_password(database, stdout, stderr)
    database.start()
    for rerun in [_search(host, database, 2) for host in (a, b)]:
        status, stdout, stderr = _ended_within(rerun, 600, since=time.monotonic())
        assert status == 0 and "finished before its process died: recorded" in stdout, stderr[-3000:]
        _no_password(database, stdout, stderr)
    trials = _trials(a, database)
    assert [trial["state"] for trial in trials] == ["COMPLETE", "COMPLETE"]
    assert [_local_experiments(host.repo) for host in (a, b)] == [1, 1]  # each ran once, on one host
    run(["dvc", "exp", "pull", "origin"], a.repo, a.env)
    names = sorted(run(["dvc", "exp", "list", "--name-only"], a.repo, a.env).stdout.split())
    assert names == sorted(trial["experiment"] for trial in trials)
    _no_password(database, _search(a, database, 2).communicate()[0])  # the reports, of the whole study
    front = (a.repo / "out" / "search" / "hosts_front.csv").read_text().splitlines()[1:]
    values = [trial["values"] for trial in trials]
    best = [v for v in values if not any(o[0] <= v[0] and o[1] <= v[1] and o != v for o in values)]
    assert len(front) == len(best)  # the front of the union of both hosts' trials


# --- DVC's queue and its workers (scripts/sweep.py --jobs) ------------------------------------------------

def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _busy_workers(host) -> list[int]:
    """The pids of host's DVC queue workers that are running an experiment."""
    return [pid for pid in host.processes() if b"exp\0queue-worker" in _command_line(pid)
            and any(b"exp\0exec-run" in _command_line(child) for child in _descendants(pid))]


@pytest.mark.slow
def test_a_queue_of_four_runs_on_two_workers_reports_a_killed_workers_run_failed_and_finishes_the_others(
        hosts, until, run):
    (a,) = hosts(1)
    a.run(["dvc", "repro", "download"])
    sweep = a.start([sys.executable, "scripts/sweep.py", "--grid", "beta=0.5,1,2,4", "--set", "epochs=1",
                     "--jobs", "2"])
    until(lambda: len(_busy_workers(a)) == 2, "two queue workers each running an experiment", process=sweep,
          every_s=LOOK_S)
    for pid in _descendants(_busy_workers(a)[0]):  # one worker and its experiment, like a power cut
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=900)
    reported = re.findall(r"^sweep: (\S+): its process stopped mid-run .*: reported failed$", stdout, re.MULTILINE)
    assert sweep.returncode == 1 and len(reported) == 1, stdout + stderr
    (lost,) = reported
    assert stderr.strip().splitlines()[-1] == (f"sweep: error: not every run reached origin: {lost}: did not finish "
                                               f"here (`dvc queue logs {lost}` says why)"), stderr
    shown = run(["dvc", "exp", "show", "--csv"], a.repo, a.env).stdout
    finished = {f"epochs-1_beta-{beta}" for beta in ("0.5", "1", "2", "4")} - {lost}
    rows = {row["Experiment"]: row for row in csv.DictReader(shown.splitlines()) if row["Experiment"]}
    assert {name: row["State"] for name, row in rows.items()} == {**dict.fromkeys(finished, "Success"), lost: "Failed"}
    assert all(rows[name]["test.kl"] not in ("", "!") for name in finished), shown


# --- The launcher's values against the machine that runs them (betavae/pipeline/launch.py) ---------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of `gpu` on a machine without CUDA")
def test_gpu_processes_on_a_machine_without_cuda_end_in_one_line_before_any_process_starts(
        stage, stage_dir, yaml_text, tiny, monkeypatch):
    stage_dir.params.write_text(yaml_text(tiny(launcher="torchrun --standalone --nproc-per-node gpu")))
    monkeypatch.setattr(launch, "run_torchrun", lambda *_: pytest.fail("processes were started"))
    ended = stage("train", stage_dir.train())
    assert ended.status == 1 and ended.error_line == (
        "train: error: launcher cannot run on this machine: torchrun's --nproc-per-node gpu starts one process per "
        f"GPU, but this machine has no CUDA device (torch {torch.__version__}): use a number of processes, or run it "
        "on a GPU machine")
    assert not (stage_dir.root / "checkpoint.pt").exists()


def _no_resolver(host, *_, **__):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize("value, device, change, message", [
    ("torchrun --standalone --nproc-per-node 3", "cpu", lambda m: m.setattr(launch.os, "sched_getaffinity",
                                                                            lambda _: {0, 1}, raising=False),
     "torchrun's --nproc-per-node 3 starts more processes than the 2 CPU cores this process may use"),
    ("torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint head-node:29500", "cpu",
     lambda m: m.setattr(socket, "getaddrinfo", _no_resolver),
     "torchrun's --rdzv-endpoint head-node:29500: head-node does not resolve to an address on this machine "
     "(Name or service not known)"),
    ("torchrun --nnodes 2 --master-addr head-node --master-port 29500", "cpu",
     lambda m: m.setattr(socket, "getaddrinfo", _no_resolver), "torchrun's --master-addr head-node: head-node"),
    ("torchrun --nnodes 2 --rdzv-backend etcd --rdzv-endpoint 127.0.0.1:2379", "cpu", lambda m: None,
     "torchrun's --rdzv-backend etcd needs the python-etcd package, which is not installed here"),
    ("srun -N 2 torchrun --nnodes 2 --nproc-per-node gpu --rdzv-endpoint $HEAD:29500", "cuda",
     lambda m: m.setenv("PATH", "/nonexistent"),
     "launcher starts with srun, but srun (Slurm) is not installed on this machine"),
])
def test_a_launcher_value_this_machine_cannot_run_is_refused_naming_it_and_what_the_machine_has(
        value, device, change, message, monkeypatch):
    change(monkeypatch)
    with pytest.raises(launch.MachineMismatch, match=re.escape(message)):
        launch.check_machine(launch.parse(value), dict(launch.os.environ), device)


def test_the_peer_timeout_is_read_from_the_environment_and_checked_there():
    assert launch.peer_timeout({}) == launch.DEFAULT_PEER_TIMEOUT_S
    assert launch.peer_timeout({launch.PEER_TIMEOUT_VARIABLE: "20"}) == 20
    for bad in ("0", "-5", "soon", "1e3", str(launch.MAX_PEER_TIMEOUT_S + 1)):
        with pytest.raises(launch.LauncherError, match=f"the environment sets {launch.PEER_TIMEOUT_VARIABLE}="):
            launch.peer_timeout({launch.PEER_TIMEOUT_VARIABLE: bad})
    with pytest.raises(launch.LauncherError, match="BETAVAE_PEER_TIMEOUT='never'"):
        launch.check_machine(launch.parse("torchrun --standalone --nproc-per-node 1"),
                             {launch.PEER_TIMEOUT_VARIABLE: "never"}, "cpu")


def _failure(exitcode: int, message: str = "", pid: int = 4242):
    return SimpleNamespace(exitcode=exitcode, pid=pid, message=message)


GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
              "[10.0.0.2]:44781: Connection reset by peer. This is typically caused by a remote worker hanging")
GLOO_SILENCE = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                "waiting 45000ms for recv operation to complete")


@pytest.mark.parametrize("failures, line", [
    ({1: _failure(-9), 0: _failure(3)}, "process 1 of 2 (pid 4242) was killed by SIGKILL; torchrun stopped the others"),
    ({0: _failure(3, GLOO_RESET)}, "process 0 of 2 (pid 4242) on this machine lost its connection to 10.0.0.2 "
     "(Connection reset by peer): that machine's processes stopped or the network to it failed; torchrun stopped "
     "this machine's processes"),
    ({1: _failure(3, GLOO_SILENCE)}, "process 1 of 2 (pid 4242) on this machine heard nothing from the other processes "
     "for 45 s (BETAVAE_PEER_TIMEOUT): another machine stopped or the network to it failed; torchrun stopped this "
     "machine's processes"),
    ({1: _failure(1)}, "process 1 of 2 stopped with an error, which process 0 reports on its machine"),
])
def test_how_a_run_stopped_is_said_in_one_line_naming_what_was_lost(failures, line):
    stopped = launch.stop_reason(failures, 2, "run `dvc repro` again")
    assert isinstance(stopped, launch.ProcessStopped) and str(stopped) == f"{line}; run `dvc repro` again"


@pytest.mark.parametrize("stop, left", [
    (errors.BetaVAEError("the params differ"), {1: (1, "worker: error: the params differ")}),
    (KeyboardInterrupt(), {}),  # a stop from outside is not the process's own error: the launcher names that
])
def test_a_process_under_torchrun_leaves_its_own_error_for_its_launcher(tmp_path, monkeypatch, stop, left):
    words = tmp_path / "logs" / "attempt_0" / "1" / errors.LastWords.FILE_NAME
    words.parent.mkdir(parents=True)
    monkeypatch.setenv(errors.LastWords.VARIABLE, str(words))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")

    def fail():
        raise stop

    with pytest.raises(SystemExit):
        errors.run(fail, "worker")
    found = errors.LastWords.found(tmp_path / "logs")
    assert {rank: (said.exitcode, said.message) for rank, said in found.items()} == left
    assert errors.LastWords.found(tmp_path / "logs", since=time.time() + 2) == {}  # an earlier run's are not this one's


def test_a_process_that_said_its_own_error_leaves_the_talking_to_it():
    assert isinstance(launch.stop_reason({0: _failure(1), 1: _failure(3)}, 2), SystemExit)


# --- What docs/scaling.md says of all this ----------------------------------------------------------------

def test_the_scaling_doc_states_the_bounds_the_code_has(repo_root):
    """Its two-host table is the committed record's (tests/test_docs.py); its bounds are the code's."""
    from betavae.experiments import studies

    doc = " ".join((repo_root / "docs" / "scaling.md").read_text().split())
    assert f"`BETAVAE_PEER_TIMEOUT` seconds (default {launch.DEFAULT_PEER_TIMEOUT_S})" in doc
    assert f"`BETAVAE_PEER_TIMEOUT` + {launch.AGENT_GRACE_S} s" in doc
    assert f"ends {launch.AGENT_GRACE_S} s after its processes" in doc
    assert f"(default {studies.HEARTBEAT_S}," in doc and f"A trial {studies.GRACE_HEARTBEATS} heartbeats late" in doc
    assert f"the database for {studies.GRACE_HEARTBEATS} heartbeats" in doc
