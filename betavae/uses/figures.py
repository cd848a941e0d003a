"""Charts for the report, drawn with matplotlib: the training history, the latent projection and
the labelled latent traversal. Mosaics of decoded digits without axes live in grids.py.

Figures are built with matplotlib's object API (no pyplot), so no display backend is chosen or
needed, and nothing global changes on import.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from betavae.core import files
from betavae.core.objective import LOGGED_TERMS
from betavae.core.schedules import LOGGED as LOGGED_SCHEDULES
from betavae.errors import BetaVAEError, one_line


def literal(text: str) -> str:
    """Text from outside (a file name, a title given on the command line) as matplotlib should draw it:
    as written. Unescaped, `$` starts math mode, and an unbalanced or malformed formula fails the
    drawing after all the work is done."""
    return text.replace("$", r"\$")


HISTORY_SPLITS = ("train", "val")
MAX_HISTORY_BYTES = 16 * 1024 * 1024  # a metric's TSV: far above MAX_EPOCHS rows of a step and a float


def history_metrics() -> list[str]:
    """The DVCLive metrics the history figure draws: each loss term for training and validation, and
    the schedules."""
    return [f"{split}/{term}" for term in LOGGED_TERMS for split in HISTORY_SPLITS] + list(LOGGED_SCHEDULES)


def read_history(metrics_dir: Path) -> pd.DataFrame:
    """DVCLive's per-metric TSVs (a header naming `step`, then a step and a value a row) -> one frame
    indexed by epoch, a column per metric the figure draws. Each file is checked: present, UTF-8,
    every row whole, steps increasing, values finite, the same epochs in every file; a file that is not
    is named in one line."""
    columns = {name: _read_metric(Path(metrics_dir), name) for name in history_metrics()}
    (first, steps), *others = ((name, list(column)) for name, column in columns.items())
    for name, other in others:
        if other != steps:
            raise BetaVAEError(f"{Path(metrics_dir) / name}.tsv: epochs {_span(other)}, but {first}.tsv has "
                               f"{_span(steps)}; the files are not of one run (run the train stage again)")
    history = pd.DataFrame({name: list(column.values()) for name, column in columns.items()}, index=steps)
    history.index.name = "epoch"
    return history


def _read_metric(metrics_dir: Path, name: str) -> dict[int, float]:
    path = metrics_dir / f"{name}.tsv"
    data = files.read_bytes(path, MAX_HISTORY_BYTES, "a training log",
                            missing="no such file; the train stage's DVCLive log writes it (run it first)")
    try:
        header, *rows = data.decode("utf-8").splitlines()
    except (UnicodeDecodeError, ValueError):
        raise BetaVAEError(f"{path}: not a DVCLive metric file (not UTF-8 text, or empty)") from None
    fields = header.split("\t")
    if "step" not in fields or len(fields) < 2:
        raise BetaVAEError(f"{path}: not a DVCLive metric file (its header {one_line(header)[:80]!r} names no step "
                           "and value)")
    values, last = {}, -1
    for number, row in enumerate(rows, start=2):
        step, value = _history_row(row, fields, path, number)
        if step <= last:
            raise BetaVAEError(f"{path}: line {number}: step {step} after step {last}; steps must increase")
        values[step], last = value, step
    if not values:
        raise BetaVAEError(f"{path}: no epochs logged")
    return values


def _history_row(row: str, fields: list[str], path: Path, number: int) -> tuple[int, float]:
    """One row of a metric file -> (step, value): the step column and the last column."""
    parts = row.split("\t")
    try:
        if len(parts) != len(fields):
            raise ValueError
        step, value = int(parts[fields.index("step")]), float(parts[-1])
    except ValueError:
        raise BetaVAEError(f"{path}: line {number}: {one_line(row)[:80]!r} is not a step and a number") from None
    if step < 0 or not math.isfinite(value):
        raise BetaVAEError(f"{path}: line {number}: step {step}, value {value}; a logged epoch has a step >= 0 "
                           "and a finite value")
    return step, value


def _span(steps: list[int]) -> str:
    return f"{steps[0]}-{steps[-1]} ({len(steps)})" if steps else "none"


def history_figure(history: pd.DataFrame):
    """A panel per loss term the training loop logs (train and validation), and one of the schedules:
    the learning rate, and the KL weight on its own axis."""
    figure = Figure(figsize=(10, 7), dpi=100)
    axes = figure.subplots(2, 2)
    for axis, (name, title) in zip(axes.flat, LOGGED_TERMS.items()):
        axis.plot(history.index, history[f"train/{name}"], label="train")
        axis.plot(history.index, history[f"val/{name}"], label="validation")
        axis.set(title=title, xlabel="epoch", ylabel="nats / image")
        axis.grid(alpha=0.3)
        axis.legend()
    (rate, rate_label), (weight, weight_label) = LOGGED_SCHEDULES.items()
    schedule = axes.flat[len(LOGGED_TERMS)]
    schedule.plot(history.index, history[rate], label=rate_label)
    schedule.set(title=rate_label.capitalize(), xlabel="epoch", ylabel=rate_label)
    schedule.grid(alpha=0.3)
    schedule.legend()
    kl_axis = schedule.twinx()
    kl_axis.plot(history.index, history[weight], color="tab:red", linestyle="--", label="KL weight")
    kl_axis.set_ylabel(weight_label)
    kl_axis.legend(loc="center right")
    figure.tight_layout()
    return figure


def projection_figure(posterior_mean: torch.Tensor, labels: torch.Tensor):
    """posterior_mean (N, Z) -> scatter of its first two principal components, coloured by digit."""
    centered = posterior_mean.double() - posterior_mean.double().mean(0)
    _, singular, basis = torch.linalg.svd(centered, full_matrices=False)
    coords = (centered @ basis[:2].T).numpy()  # (N, 2)
    explained = (singular[:2] ** 2 / (singular ** 2).sum()).tolist()
    figure = Figure(figsize=(7, 6), dpi=100)
    axis = figure.subplots()
    scatter = axis.scatter(coords[:, 0], coords[:, 1], c=labels.numpy(), cmap="tab10", s=3, alpha=0.6,
                           vmin=-0.5, vmax=9.5, rasterized=True)
    figure.colorbar(scatter, ax=axis, ticks=range(10), label="digit")
    axis.set(title="Test-set posterior means, first two principal components",
             xlabel=f"PC 1 ({explained[0]:.0%} of variance)",
             ylabel=f"PC 2 ({explained[1]:.0%} of variance)")
    figure.tight_layout()
    return figure


def traversal_figure(pixels: torch.Tensor, labels: list[str], values: torch.Tensor, title: str):
    """pixels: a grids.mosaic of traversal rows (one per label), values: the latent values of its
    columns -> the mosaic with each row labelled and each column's value underneath."""
    rows, columns = len(labels), len(values)
    height, width = pixels.shape
    figure = Figure(figsize=(1.0 + 0.75 * columns, 0.8 + 0.75 * rows), dpi=100)
    axis = figure.subplots()
    axis.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axis.set_yticks([(i + 0.5) * height / rows for i in range(rows)], labels)
    axis.set_xticks([(i + 0.5) * width / columns for i in range(columns)],
                    [f"{round(v, 1) + 0:+.1f}" for v in values.tolist()])  # + 0 turns -0.0 into 0.0
    axis.set_xlabel("value of the traversed dimension (prior standard deviations)")
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
