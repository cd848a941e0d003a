"""Stage train: fit the β-VAE; write the best-validation model, the resumable training state,
DVCLive metrics and the sample/reconstruction snapshots."""

import argparse
from pathlib import Path

from betavae import cli, runtime
from betavae.params import load_params
from betavae.train import RESUME_MODES, Outputs, ResumeRefused, TrainingDiverged, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--model", type=Path, required=True, help="best model checkpoint to write")
    parser.add_argument("--checkpoint", type=Path, required=True, help="training state, kept for resuming")
    parser.add_argument("--live", type=Path, required=True, help="DVCLive directory")
    parser.add_argument("--snapshots", type=Path, required=True, help="directory for per-epoch grids")
    parser.add_argument("--resume", choices=RESUME_MODES, default="auto",
                        help="auto: continue a matching checkpoint, else start fresh; "
                             "require: fail unless one matches; never: always start fresh")
    args = parser.parse_args()
    params = load_params(args.params)
    outputs = Outputs(args.model, args.checkpoint, args.live, args.snapshots)
    log = lambda line: print(f"train: {line}", flush=True)  # noqa: E731
    runtime.retain_freed_memory()
    try:
        progress = train(params, args.data, outputs, resume=args.resume, log=log)
    except KeyboardInterrupt:
        log(f"interrupted; completed epochs are saved in {args.checkpoint}. "
            "Run `dvc repro` again to resume from there.")
        raise SystemExit(130) from None
    log(f"best validation loss {progress.best_val_loss:.3f} at epoch {progress.best_epoch}; "
        f"model written to {args.model}")


if __name__ == "__main__":
    cli.run(main, "train", (TrainingDiverged, ResumeRefused))
