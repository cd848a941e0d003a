"""models/model.pt, the deliverable, as a typed record that writes and reads it; and the one safe way
this project reads any torch file (the model, and the training state of betavae/training/resume.py).

A model file holds (format 4):
    format, architecture    what kind of file and network it is (checked on reading)
    model_config            the network's shape (latent_dim, dropout)
    params                  the training params that produced it (params.yaml's train keys)
    epoch, selection        the epoch it is from, and the validation metric that chose it
    latent_kl               the validation KL of each latent dimension at that epoch
    provenance              where it was trained: torch version, device, precision, processes, step,
                            and the code: a SHA-256 of each module training ran (code_dependencies)
    model                   the weights
It loads with torch.load(weights_only=True) alone. Older files still load: format 3's provenance
names no code; format 2 (before the selection and the provenance) has the validation loss as its
selection, and params it lacks read as the schema's defaults, which is how such files trained.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import re
from pathlib import Path

import torch

from betavae.core import files
from betavae.core.model import ARCHITECTURE, ConvVAE, ModelConfig
from betavae.errors import BetaVAEError, one_line
from betavae.pipeline import atomic, dotted
from betavae.pipeline.params import Params, ParamsError, parse_params

MODEL_FORMAT = "betavae-model/4"  # 4: the provenance names the training code; 3: the selection and provenance
OLDER_FORMATS = ("betavae-model/3", "betavae-model/2")  # still read
MAX_TORCH_BYTES = 2**30  # the spec's model is 4 MB, its training state (with AdamW's moments) 13 MB


class CheckpointError(BetaVAEError, ValueError):
    """A torch file that is missing, unreadable, unsafe, or not what it claims; the message names it."""


@dataclasses.dataclass(frozen=True)
class Selection:
    metric: str  # the validation metric that chose the epoch (params' select.metric): loss or nll
    value: float  # its value at that epoch


@dataclasses.dataclass(frozen=True)
class Provenance:
    torch: str  # torch.__version__ of the run
    device: str  # cpu or cuda
    precision: str  # fp32, or bf16 autocast
    processes: int  # data-parallel processes
    step: str  # how the training step ran: eager, or cuda-graph (betavae/training/step.py)
    # {module path: SHA-256 of its source} of the code training ran (code_dependencies.code_fingerprint);
    # None in files written before format 4
    code: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class ModelFile:
    config: ModelConfig
    params: Params  # what it was trained with; evaluation's group (not part of training) at its defaults
    epoch: int
    selection: Selection
    latent_kl: tuple[float, ...]
    provenance: Provenance | None  # None in files written before format 3
    weights: dict[str, torch.Tensor]

    def to_record(self) -> dict:
        """What torch.save writes: plain data and tensors, in a fixed order."""
        return {"format": MODEL_FORMAT, "architecture": ARCHITECTURE, "model_config": dataclasses.asdict(self.config),
                "params": self.params.training(), "epoch": self.epoch,
                "selection": dataclasses.asdict(self.selection), "latent_kl": list(self.latent_kl),
                "provenance": None if self.provenance is None else dataclasses.asdict(self.provenance),
                "model": self.weights}

    def write(self, path: str | Path) -> None:
        atomic.write_torch(path, self.to_record())

    def to_bytes(self) -> bytes:
        return atomic.torch_bytes(self.to_record())

    @classmethod
    def read(cls, path: str | Path) -> ModelFile:
        """The model file at path, checked: its format, architecture, shape, params and weights."""
        record = read_torch_file(path, (MODEL_FORMAT, *OLDER_FORMATS))
        try:
            found = cls._from_record(record)
        except Exception as error:  # whatever a record of the wrong shape raises while it is read field by field
            raise CheckpointError(f"{path}: not a complete model file ({type(error).__name__}: "
                                  f"{one_line(error)[:200]})") from None
        found.network(path)  # refuses weights that do not fit or hold NaN
        return found

    @classmethod
    def _from_record(cls, record: dict) -> ModelFile:
        defaults = Params().to_dict()
        given = dotted.flatten(record["params"])
        try:
            params = parse_params(dotted.nest({**dotted.flatten(defaults), **given}), "its params")
        except ParamsError as error:
            raise ValueError(str(error)) from None
        if record["format"] == "betavae-model/2":
            selection, provenance = Selection("loss", float(record["val_loss"])), None
        else:
            selection = Selection(str(record["selection"]["metric"]), float(record["selection"]["value"]))
            provenance = None if record["provenance"] is None else Provenance(**record["provenance"])
            if provenance is not None and provenance.code is not None:
                provenance = dataclasses.replace(provenance, code={str(name): str(digest) for name, digest
                                                                   in provenance.code.items()})
        weights = record["model"]
        if not isinstance(weights, dict) or not all(torch.is_tensor(value) for value in weights.values()):
            raise ValueError("its weights are not a mapping of tensors")
        latent_kl = tuple(float(value) for value in record["latent_kl"])
        return cls(ModelConfig(**record["model_config"]), params, int(record["epoch"]), selection, latent_kl,
                   provenance, weights)

    def network(self, path: str | Path = "the model file") -> ConvVAE:
        """A fresh ConvVAE holding these weights, on the CPU, in eval mode."""
        try:
            model = ConvVAE(self.config)
            model.load_state_dict(self.weights)
        except (TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: weights do not fit the model ({one_line(error)[:200]})") from None
        broken = [name for name, tensor in model.state_dict().items()
                  if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if broken:
            more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
            raise CheckpointError(f"{path}: the weights hold NaN or infinity ({broken[0]}{more}); "
                                  "this is not a usable model")
        if len(self.latent_kl) != self.config.latent_dim:
            raise CheckpointError(f"{path}: {len(self.latent_kl)} latent KL values for "
                                  f"{self.config.latent_dim} latent dimensions")
        return model.eval()


def load_model(path: str | Path, device: torch.device) -> tuple[ConvVAE, ModelFile]:
    """The model saved at path, in eval mode on device, with its file. Every consumer of a model file
    (evaluate, plot, export, the API and CLI) loads it here, so a file that is damaged, unsafe or
    holds NaN or infinity is refused by all of them alike."""
    found = ModelFile.read(path)
    return found.network(path).to(device), found


def read_torch_file(path: str | Path, formats: tuple[str, ...]) -> dict:
    """A torch file read safely (plain data and tensors only; a file that names code is refused, not
    run), checked to be one of these formats written for this code's architecture."""
    path = Path(path)
    data = files.read_bytes(path, MAX_TORCH_BYTES, "a model or training-state file", CheckpointError)
    try:
        record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what the safe loader raises for anything but data
        raise CheckpointError(f"{path}: {_refusal(error)}") from None
    except Exception as error:  # a damaged file surfaces as any of a dozen types from torch's reader
        raise CheckpointError(f"{path}: unreadable, truncated or not a torch checkpoint "
                              f"({one_line(error)[:200]})") from None
    found = record.get("format") if isinstance(record, dict) else type(record).__name__
    if not isinstance(record, dict) or found not in formats:
        raise CheckpointError(f"{path}: format {found!r}, expected {' or '.join(map(repr, formats))}")
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
