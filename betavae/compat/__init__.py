"""Workarounds for other tools' internals, gathered here, each with the version it was written for
and is tested against. requirements.txt pins those versions; tests/test_compat.py fails when an
installed version differs, so that a bump is a decision to re-check each workaround (and to delete
one the new version no longer needs), never an accident.

    dvc_workspace.py      DVC 3.67.1: a failed `dvc exp run -S` leaves its values in params.yaml where
                          git may not see them, and two `dvc exp run` at once write each other's values;
                          the stages refuse to start on such a file and flag it after a failure (reads
                          the `dvc exp run` command line from /proc). tests/test_workspace.py
    pygit2_blobs.py       pygit2 1.21.0: its blob reader, through which DVC reads every committed file of
                          an experiment, waits forever when its writer thread fails or a wake-up is lost;
                          a guarded wait replaces it, process-wide. tests/test_experiments.py
    code_dependencies.py  DVC 3.67.1 does not know which modules a stage's code imports: the import
                          closure of each stage's script, found from the source, is written into
                          dvc.yaml (scripts/dvc_yaml.py) and hashed into training checkpoints.
                          tests/test_dvc_yaml.py
    ../speed/runtime.py   torch 2.14.1: torch.use_deterministic_algorithms imports TorchInductor and
                          TorchDynamo (2.5 s a process) to set one compiler flag; the kernels' switch is
                          called directly, the compiler's flag set where torch.compile is used. It sits in
                          the speed layer, below this one, because the stages' arithmetic needs it there.
                          tests/test_runtime.py
"""

# What requirements.txt pins, for these workarounds:
WRITTEN_FOR = {"dvc": "3.67.1", "pygit2": "1.21.0", "torch": "2.14.1"}
