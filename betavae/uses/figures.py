"""Charts for the report, drawn with matplotlib: the training history, the latent projection and
the labelled latent traversal. Mosaics of decoded digits without axes live in grids.py.

Figures are built with matplotlib's object API (no pyplot), so no display backend is chosen or
needed, and nothing global changes on import.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from betavae.core.objective import LOGGED_TERMS
from betavae.core.schedules import LOGGED as LOGGED_SCHEDULES
from betavae.errors import BetaVAEError


def read_history(metrics_dir: Path) -> pd.DataFrame:
    """DVCLive's per-metric TSVs (step, value) -> one frame indexed by epoch, a column per metric."""
    columns = {}
    for tsv in sorted(Path(metrics_dir).rglob("*.tsv")):
        name = tsv.relative_to(metrics_dir).with_suffix("").as_posix()
        frame = pd.read_csv(tsv, sep="\t")
        columns[name] = frame.set_index("step")[frame.columns[-1]]
    if not columns:
        raise BetaVAEError(f"{metrics_dir}: no DVCLive metric files (run the train stage first)")
    history = pd.DataFrame(columns)
    history.index.name = "epoch"
    return history


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
