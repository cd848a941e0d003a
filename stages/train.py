"""Stage train: fit the β-VAE; write the best-validation model and the DVCLive metrics and
snapshots, keeping the training state beside --checkpoint until the run finishes, so an interrupted
run resumes (betavae/training/resume.py). With `launcher: torchrun ...` this process starts the run's
processes (betavae/pipeline/launch.py), each of which runs this script."""

import os
import sys
from pathlib import Path

from betavae import errors
from betavae.compat import dvc_workspace
from betavae.core import schedules
from betavae.errors import ArgumentParser, environment_choice
from betavae.pipeline import launch
from betavae.pipeline.params import PARAMS_FILE, load_params
from betavae.speed import runtime
from betavae.training import distributed
from betavae.training.resume import MODES
from betavae.training.state import Outputs

RESUME_VARIABLE = "BETAVAE_RESUME"  # `make retrain` sets it to "never"


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--data", type=Path, required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--model", type=Path, required=True, help="best model checkpoint to write")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="training state, kept while the run is unfinished")
    parser.add_argument("--live", type=Path, required=True, help="DVCLive directory (metrics and snapshots)")
    parser.add_argument("--resume", choices=MODES, default=environment_choice(RESUME_VARIABLE, MODES, "auto"),
                        help="auto: continue a matching checkpoint, else start fresh; require: fail "
                             f"unless one matches; never: always start fresh (default: ${RESUME_VARIABLE} or auto)")
    args = parser.parse_args()
    params = load_params(args.params)
    launcher = launch.parse(params.launcher)
    resume_hint = (f"completed epochs are saved in {args.checkpoint}; run `{dvc_workspace.rerun_command()}` "
                   "again to resume")
    if launch.is_launcher_process(launcher, dict(os.environ)):
        launch.check_machine(launcher, dict(os.environ), params.device)
        _launch(launcher, resume_hint)
        return
    for warning in schedules.warnings(params):
        _log(f"warning: {warning}")
    runtime.retain_freed_memory()
    from betavae.training.loop import train  # torch and the training code: not needed to launch processes

    try:
        progress = train(params, args.data, Outputs(args.model, args.checkpoint, args.live), args.resume, _log,
                         between_epochs=dvc_workspace.Watch(args.params, params).check)
    except KeyboardInterrupt:
        _log(f"interrupted; {resume_hint}")
        raise
    except distributed.PeerLost as error:
        launch.report_to_launcher(str(error))
        raise SystemExit(launch.PEER_LOST_STATUS) from None  # the launcher names what was lost
    _log(f"best validation {params.select.metric} {progress.best.value:.3f} at epoch {progress.best.epoch}; "
         f"model written to {args.model}")


def _launch(launcher: launch.Launcher, resume_hint: str) -> None:
    arguments = sys.argv[1:]
    if launch.needs_srun(launcher, dict(os.environ)):
        _log(f"starting {launch.describe(launcher, dict(os.environ))} -m stages.train")
        launch.exec_srun(launcher, "stages.train", arguments)
    torchrun_only = launch.Launcher(torchrun=launcher.torchrun, uses_torchrun=True)
    _log(f"starting {launch.describe(torchrun_only, dict(os.environ))} -m stages.train")
    meeting = launcher.meeting(dict(os.environ))
    if meeting is not None:
        _log(meeting)
    try:
        launch.run_torchrun(launcher, "stages.train", arguments, resume_hint)
    except launch.ProcessStopped:
        print(file=sys.stderr)  # the line a process's progress bar was drawing when it stopped
        raise
    except KeyboardInterrupt:
        _log(f"interrupted; {resume_hint}")
        raise


def _log(line: str) -> None:
    errors.tell(f"train: {line}", sys.stdout)


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "train")
