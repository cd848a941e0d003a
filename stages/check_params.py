"""Stage check_params: validate the whole params.yaml. DVC reruns a stage only when a param it
lists changes; this stage lists the whole file, so `dvc repro` checks every key, including a key
added by hand that no other stage reads."""

import argparse
from pathlib import Path

from betavae import workspace
from betavae.params import check_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    check_file(args.params)
    print(f"check_params: {args.params} is valid")


if __name__ == "__main__":
    workspace.run_stage(main, "check_params")
