"""Stage train: fit the β-VAE; write the best-validation model and the DVCLive metrics and
snapshots, keeping the training state in --checkpoint until the run finishes, so an interrupted
run resumes (betavae/resume.py). Under torchrun, every process runs this script."""

import argparse
import os
from pathlib import Path

from betavae import distributed, runtime, workspace
from betavae.params import Watch, load_params, schedule_warnings
from betavae.resume import MODES
from betavae.train import Outputs, train

RESUME_VARIABLE = "BETAVAE_RESUME"  # `make retrain` sets it to "never"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--model", type=Path, required=True, help="best model checkpoint to write")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="training state, kept while the run is unfinished")
    parser.add_argument("--live", type=Path, required=True, help="DVCLive directory (metrics and snapshots)")
    parser.add_argument("--resume", choices=MODES, default=os.environ.get(RESUME_VARIABLE, "auto"),
                        help="auto: continue a matching checkpoint, else start fresh; require: fail "
                             f"unless one matches; never: always start fresh (default: ${RESUME_VARIABLE} or auto)")
    args = parser.parse_args()
    params = load_params(args.params)
    is_main = distributed.world_from_environment().is_main
    log = (lambda line: print(f"train: {line}", flush=True)) if is_main else (lambda line: None)
    for warning in schedule_warnings(params):
        log(f"warning: {warning}")
    runtime.retain_freed_memory()
    outputs = Outputs(args.model, args.checkpoint, args.live)
    try:
        results = train(params, args.data, outputs, args.resume, log, between_epochs=Watch(args.params, params).check)
    except KeyboardInterrupt:
        log(f"interrupted; completed epochs are saved in {args.checkpoint}. Run `dvc repro` again to resume.")
        raise
    log(f"best validation loss {results.best.val_loss:.3f} at epoch {results.best.epoch}; "
        f"model written to {args.model}")


if __name__ == "__main__":
    workspace.run_stage(main, "train")
