"""Self-describing model files, and the one safe way this project reads any checkpoint.

models/model.pt, the deliverable: {"format", "architecture", "model_config", "params" (the training
params that produced it), "epoch", "val_loss", "latent_kl" (validation KL of each latent dimension at
that epoch), "model" (the weights)}. It loads with torch.load(weights_only=True) alone. The training
state, which resumes an interrupted run, is resume.py's.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from betavae.core.model import ARCHITECTURE, ConvVAE, ModelConfig
from betavae.errors import BetaVAEError, one_line

MODEL_FORMAT = "betavae-model/2"  # 2: records only the training params, and the latent KL


class CheckpointError(BetaVAEError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe, or not what it claims; the message names the file."""


def model_record(weights: dict, config: ModelConfig, params: dict, epoch: int, val_loss: float,
                 latent_kl: list[float]) -> dict:
    return {"format": MODEL_FORMAT, "architecture": ARCHITECTURE, "model_config": config.to_dict(),
            "params": params, "epoch": epoch, "val_loss": val_loss, "latent_kl": latent_kl, "model": weights}


def read(path: str | Path, expected_format: str) -> dict:
    """Load a checkpoint safely and check it is the kind and architecture this code writes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what the safe loader raises for anything but data
        raise CheckpointError(f"{path}: {_refusal(error)}") from None
    except Exception as error:  # a damaged file surfaces as any of a dozen types from torch's reader
        raise CheckpointError(f"{path}: unreadable, truncated or not a torch checkpoint "
                              f"({one_line(error)[:200]})") from None
    if not isinstance(record, dict) or record.get("format") != expected_format:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {expected_format!r}")
    if record.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{path}: written for model {record.get('architecture')!r}, "
                              f"this code builds {ARCHITECTURE!r}")
    return record


def _refusal(error: pickle.UnpicklingError) -> str:
    """Why the safe loader refused a file, without torch's advice to load it unsafely (which would
    run whatever code the file names)."""
    text = str(error)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return (f"refused for safety: the file references code ({named.group(1)}), which loading "
                "would run; a checkpoint holds only tensors and plain values")
    detail = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    if "weights_only" in detail:  # only torch's advice is left
        detail = "not a plain torch checkpoint"
    return f"unreadable, truncated or not a torch checkpoint ({one_line(detail)[:200]})"


def load_model(path: str | Path, device: torch.device) -> tuple[ConvVAE, dict]:
    """The model saved at path, in eval mode on device, with its record (params, epoch, ...). Every
    consumer of a model file (evaluate, plot, export, the API and CLI) loads it here, so a file whose
    weights hold NaN or infinity is refused by all of them."""
    record = read(path, MODEL_FORMAT)
    try:
        model = ConvVAE(ModelConfig(**record["model_config"]))
        model.load_state_dict(record["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not fit the model ({one_line(error)[:200]})") from None
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise CheckpointError(f"{path}: the weights hold NaN or infinity ({broken[0]}{more}); "
                              "this is not a usable model")
    return model.to(device).eval(), record
