"""params.yaml, read and validated once into a typed, frozen object.

Every stage calls `load_params`; a bad file fails before any work starts, with one line that
names the offending key. Floats accept YAML ints because `dvc exp run -S beta=4` writes an int.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path

import yaml

MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
INTERPOLATIONS = ("nearest", "bilinear")  # resampling of augmented images (betavae/augment.py)


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key and says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Augment:
    rotation: float = 5.0  # max absolute rotation, degrees
    translate: float = 0.05  # max absolute shift, fraction of the image side
    interpolation: str = "nearest"  # how warped images are resampled


@dataclasses.dataclass(frozen=True)
class Data:
    val_size: int = 5_000  # training images held out to pick the best epoch
    limit: int = 0  # 0: all images; N: first N training and first N test images


@dataclasses.dataclass(frozen=True)
class Eval:
    iw_samples: int = 100  # importance samples per test image for the NLL estimate


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int = 42
    epochs: int = 120
    beta: float = 0.8
    z_dim: int = 32
    base_lr: float = 1e-4
    max_lr: float = 3e-4
    batch_size: int = 256
    warmup_epochs: int = 10
    kl_anneal_epochs: int = 20
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    dropout: float = 0.1
    augment: Augment = Augment()
    data: Data = Data()
    snapshot_every: int = 10
    eval: Eval = Eval()
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool = True
    compile: bool = False

    @property
    def train_images(self) -> int:
        """Images the optimiser sees per epoch, after the limit and the validation hold-out."""
        return self.pool_images - self.data.val_size

    @property
    def pool_images(self) -> int:
        return self.data.limit or MNIST_TRAIN_IMAGES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# (key, predicate, what the value must be): checked after the types, in this order.
_RULES: list[tuple[str, typing.Callable[[Params], bool], str]] = [
    ("epochs", lambda p: p.epochs >= 1, "must be >= 1"),
    ("beta", lambda p: p.beta >= 0, "must be >= 0"),
    ("z_dim", lambda p: p.z_dim >= 1, "must be >= 1"),
    ("base_lr", lambda p: p.base_lr > 0, "must be > 0"),
    ("max_lr", lambda p: p.max_lr > 0, "must be > 0"),
    ("base_lr", lambda p: p.base_lr <= p.max_lr, "must be <= max_lr"),
    ("batch_size", lambda p: p.batch_size >= 1, "must be >= 1"),
    ("warmup_epochs", lambda p: 0 <= p.warmup_epochs <= p.epochs, "must be in [0, epochs]"),
    ("kl_anneal_epochs", lambda p: p.kl_anneal_epochs >= 0, "must be >= 0"),
    ("weight_decay", lambda p: p.weight_decay >= 0, "must be >= 0"),
    ("grad_clip", lambda p: p.grad_clip > 0, "must be > 0"),
    ("dropout", lambda p: 0 <= p.dropout < 1, "must be in [0, 1)"),
    ("augment.rotation", lambda p: 0 <= p.augment.rotation <= 180, "must be in [0, 180] degrees"),
    ("augment.translate", lambda p: 0 <= p.augment.translate < 1, "must be in [0, 1)"),
    ("augment.interpolation", lambda p: p.augment.interpolation in INTERPOLATIONS,
     f"must be one of {', '.join(INTERPOLATIONS)}"),
    ("data.limit", lambda p: 0 <= p.data.limit <= MNIST_TRAIN_IMAGES,
     f"must be 0 (all) or in [1, {MNIST_TRAIN_IMAGES}]"),
    ("data.val_size", lambda p: 1 <= p.data.val_size < p.pool_images,
     "must be >= 1 and smaller than the training images (60000, or data.limit)"),
    ("batch_size", lambda p: p.batch_size <= p.train_images,
     "must not exceed the training images left after data.val_size"),
    ("snapshot_every", lambda p: p.snapshot_every >= 1, "must be >= 1"),
    ("eval.iw_samples", lambda p: p.eval.iw_samples >= 1, "must be >= 1"),
    ("device", lambda p: p.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
    ("precision", lambda p: p.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
]


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({_first_line(error)})") from None
    return parse_params(raw, source=str(path))


def parse_params(raw: object, source: str = "params") -> Params:
    params = _build(Params, raw if raw is not None else {}, prefix="", source=source)
    for key, holds, requirement in _RULES:
        if not holds(params):
            value = _lookup(params, key)
            raise ParamsError(f"{source}: {key} {requirement} (got {value!r})")
    return params


def _build(cls, raw: object, prefix: str, source: str):
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "top level"
        raise ParamsError(f"{source}: {where} must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ParamsError(f"{source}: unknown key {prefix}{key}{_suggest(str(key), fields, prefix)}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}.", source)
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}", source)
    return cls(**values)


def _coerce(value: object, kind: type, key: str, source: str):
    # bool is an int in Python; a YAML `true` must never pass as an epoch count.
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        raise ParamsError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ParamsError(f"{source}: {key} must be a finite number, got {value!r}")
    return value


def _suggest(key: str, fields: typing.Iterable[str], prefix: str) -> str:
    names = [f"{prefix}{name}" for name in fields]
    close = difflib.get_close_matches(f"{prefix}{key}", names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(names)})"


def _lookup(params: Params, dotted: str):
    value = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())
