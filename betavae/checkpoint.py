"""Self-describing checkpoints, readable with torch.load(weights_only=True) alone.

models/model.pt, the deliverable: {"format", "architecture", "model_config", "params", "epoch",
"val_loss", "model"}. The training state (models/checkpoint.pt) adds the optimiser, every RNG, the
metric history, the snapshot images and a hash of each package module that ran, so an interrupted run
resumes to the same bytes, and only with the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from betavae.model import ARCHITECTURE, ConvVAE, ModelConfig

MODEL_FORMAT = "betavae-model/1"
TRAIN_STATE_FORMAT = "betavae-train-state/2"  # 2: records the code that wrote it


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not what it claims; the message names the file."""


def model_record(model_state: dict, config: ModelConfig, params: dict, epoch: int,
                 val_loss: float) -> dict:
    return {"format": MODEL_FORMAT, "architecture": ARCHITECTURE, "model_config": config.to_dict(),
            "params": params, "epoch": epoch, "val_loss": val_loss, "model": model_state}


def read(path: str | Path, expected_format: str) -> dict:
    """Load a checkpoint safely and check it is the kind and architecture this code writes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file surfaces as any of a dozen types from torch's unpickler
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: unreadable, truncated or not a torch checkpoint ({reason})") from None
    if not isinstance(record, dict) or record.get("format") != expected_format:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {expected_format!r}")
    if record.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{path}: written for model {record.get('architecture')!r}, "
                              f"this code builds {ARCHITECTURE!r}")
    return record


def load_model(path: str | Path, device: torch.device) -> tuple[ConvVAE, dict]:
    """The model saved at path, in eval mode on device, with its record (params, epoch, ...)."""
    record = read(path, MODEL_FORMAT)
    try:
        model = ConvVAE(ModelConfig(**record["model_config"]))
        model.load_state_dict(record["model"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), record
