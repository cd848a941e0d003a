"""The report figures: training history, samples, reconstructions, interpolation, latent map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from betavae import images
from betavae.model import ConvVAE

HISTORY_PANELS = (  # (title, y label, [(metric, label)])
    ("β-weighted loss", "nats / image", [("train/loss", "train"), ("val/loss", "validation")]),
    ("Reconstruction", "nats / image", [("train/recon", "train"), ("val/recon", "validation")]),
    ("KL divergence", "nats / image", [("train/kl", "train"), ("val/kl", "validation")]),
    ("Learning rate", "learning rate", [("lr", "learning rate")]),
)


def read_history(metrics_dir: Path) -> pd.DataFrame:
    """DVCLive's per-metric TSVs (step, value) -> one frame indexed by epoch, a column per metric."""
    columns = {}
    for tsv in sorted(Path(metrics_dir).rglob("*.tsv")):
        name = tsv.relative_to(metrics_dir).with_suffix("").as_posix()
        frame = pd.read_csv(tsv, sep="\t")
        columns[name] = frame.set_index("step")[frame.columns[-1]]
    if not columns:
        raise FileNotFoundError(f"{metrics_dir}: no DVCLive metric files")
    history = pd.DataFrame(columns)
    history.index.name = "epoch"
    return history


def history_figure(history: pd.DataFrame):
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=100)
    for axis, (title, ylabel, series) in zip(axes.flat, HISTORY_PANELS):
        for metric, label in series:
            axis.plot(history.index, history[metric], label=label)
        axis.set(title=title, xlabel="epoch", ylabel=ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    kl_axis = axes.flat[3].twinx()
    kl_axis.plot(history.index, history["kl_weight"], color="tab:red", linestyle="--", label="KL weight")
    kl_axis.set_ylabel("KL weight (effective β)")
    kl_axis.legend(loc="center right")
    figure.tight_layout()
    return figure


@torch.no_grad()
def interpolation_grid(model: ConvVAE, starts: torch.Tensor, ends: torch.Tensor, steps: int) -> bytes:
    """starts, ends (R, 1, 28, 28) -> R rows walking linearly in latent space between their means."""
    start_mu, _ = model.encode(starts)  # (R, Z)
    end_mu, _ = model.encode(ends)
    weights = torch.linspace(0, 1, steps).view(1, steps, 1)
    path = start_mu[:, None] * (1 - weights) + end_mu[:, None] * weights  # (R, steps, Z)
    decoded = torch.sigmoid(model.decode(path.reshape(-1, path.shape[-1])))
    return images.png_bytes(images.grid(decoded, steps))


def projection_figure(posterior_mean: torch.Tensor, labels: torch.Tensor):
    """posterior_mean (N, Z) -> scatter of its first two principal components, coloured by digit."""
    centered = posterior_mean.double() - posterior_mean.double().mean(0)
    _, singular, basis = torch.linalg.svd(centered, full_matrices=False)
    coords = (centered @ basis[:2].T).numpy()  # (N, 2)
    explained = (singular[:2] ** 2 / (singular ** 2).sum()).tolist()
    figure, axis = plt.subplots(figsize=(7, 6), dpi=100)
    scatter = axis.scatter(coords[:, 0], coords[:, 1], c=labels.numpy(), cmap="tab10", s=3, alpha=0.6,
                           vmin=-0.5, vmax=9.5, rasterized=True)
    figure.colorbar(scatter, ax=axis, ticks=range(10), label="digit")
    axis.set(title="Test-set posterior means, first two principal components",
             xlabel=f"PC 1 ({explained[0]:.0%} of variance)",
             ylabel=f"PC 2 ({explained[1]:.0%} of variance)")
    figure.tight_layout()
    return figure
