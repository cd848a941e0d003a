"""Stage download: the four MNIST IDX files, verified against canonical checksums, into --out."""

import argparse
from pathlib import Path

from betavae.compat import dvc_workspace
from betavae.pipeline.fetch import download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the IDX files")
    args = parser.parse_args()
    source = download(args.out, log=lambda line: print(f"download: {line}", flush=True))
    print(f"download: MNIST verified in {args.out} (from {source})")


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "download")
