"""Stage download: the four MNIST IDX files, verified against canonical checksums, into --out."""

from pathlib import Path

from betavae.compat import dvc_workspace
from betavae.errors import ArgumentParser, say
from betavae.pipeline.fetch import download


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the IDX files")
    args = parser.parse_args()
    source = download(args.out, log=lambda line: say(f"download: {line}"))
    say(f"download: MNIST verified in {args.out} (from {source})")


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "download")
