"""params.yaml, read and validated once into a typed, frozen object.

Every stage calls `load_params`; a bad file fails before any work starts, with one line that
names the offending key. The file is read as DVC reads and writes it: YAML 1.2, with the library
and settings DVC uses (ruamel.yaml, typ="safe"), so what `dvc exp run -S weight_decay=1e-6` writes,
what dvc.lock and `dvc exp show` record and what the model trains with are the same values (PyYAML
reads YAML 1.1, where `1e-6` is a string and `yes`, `017` or `1:30` mean other things). Floats
accept YAML ints because `dvc exp run -S beta=4` writes an int.
Every number is bounded by what the code can do with it; where memory is the limit, the stages
also estimate what a run needs before allocating it (betavae/model.py, betavae/runtime.py).

This module is also the one home of which params each stage's outputs depend on
(`TRAINING_PARAMS`, `EVALUATION_PARAMS`, `PLOT_PARAMS`, `EXPORT_PARAMS`): dvc.yaml lists exactly these
(tests/test_dvc_yaml.py), model.pt records the training ones, and a training checkpoint is
resumed only when they match.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path

from betavae import dotted, launch
from betavae.errors import BetaVAEError, one_line

PARAMS_FILE = "params.yaml"  # what dvc.yaml's stages read and `dvc exp run -S` edits
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
INTERPOLATIONS = ("nearest", "bilinear")  # resampling of augmented images (betavae/augment.py)
BINARIZATIONS = ("none", "dynamic")  # how training images are presented (betavae/data.py)
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
MAX_EPOCHS = 100_000
MAX_LATENT_DIM = 65_536  # beyond this the latent layers alone outgrow any single machine's memory
MAX_IW_SAMPLES = 100_000


class ParamsError(BetaVAEError, ValueError):
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
    binarize: str = "none"  # none: grey pixels; dynamic: a fresh Bernoulli draw of each image each time


@dataclasses.dataclass(frozen=True)
class Eval:
    iw_samples: int = 100  # importance samples per test image for the NLL estimate
    binarized_samples: int = 100  # importance samples per image for the binarized-MNIST NLL (papers: 5000)


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
    launcher: str = "python"  # or "torchrun --standalone --nproc-per-node N" for data-parallel training

    @property
    def train_images(self) -> int:
        """Images the optimiser sees per epoch, after the limit and the validation hold-out."""
        return self.pool_images - self.data.val_size

    @property
    def pool_images(self) -> int:
        return self.data.limit or MNIST_TRAIN_IMAGES

    @property
    def world_size(self) -> int | None:
        """Processes the launcher starts, or None where that is decided when they start."""
        return launch.parse(self.launcher).world_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def get(self, key: str) -> object:
        """The value of a dotted key ("data.limit"), or of a whole group as a dict ("augment")."""
        return dotted.get(self.to_dict(), key)

    def select(self, keys: typing.Iterable[str]) -> dict:
        """The nested dict of just these keys ("beta", "data.limit", or a whole group "augment")."""
        return dotted.select(self.to_dict(), keys)


# Everything but evaluation's own group changes what training produces.
TRAINING_PARAMS = tuple(field.name for field in dataclasses.fields(Params) if field.name != "eval")
EVALUATION_PARAMS = ("seed", "data.limit", "eval.iw_samples", "eval.binarized_samples", "device", "precision",
                     "channels_last")
PLOT_PARAMS = ("seed", "data.limit")
EXPORT_PARAMS = ("data.limit",)  # which test images the export is checked on


# (key, predicate, what the value must be): checked after the types, in this order.
_RULES: list[tuple[str, typing.Callable[[Params], bool], str | typing.Callable[[Params], str]]] = [
    ("seed", lambda p: 0 <= p.seed <= MAX_SEED, f"must be in [0, {MAX_SEED}] (a 64-bit seed)"),
    ("epochs", lambda p: 1 <= p.epochs <= MAX_EPOCHS, f"must be in [1, {MAX_EPOCHS}]"),
    ("beta", lambda p: p.beta >= 0, "must be >= 0"),
    ("z_dim", lambda p: 1 <= p.z_dim <= MAX_LATENT_DIM, f"must be in [1, {MAX_LATENT_DIM}]"),
    ("base_lr", lambda p: p.base_lr > 0, "must be > 0"),
    ("max_lr", lambda p: p.max_lr > 0, "must be > 0"),
    ("base_lr", lambda p: p.base_lr <= p.max_lr, "must be <= max_lr"),
    ("batch_size", lambda p: p.batch_size >= 1, "must be >= 1"),
    ("warmup_epochs", lambda p: 0 <= p.warmup_epochs <= MAX_EPOCHS, f"must be in [0, {MAX_EPOCHS}]"),
    ("kl_anneal_epochs", lambda p: 0 <= p.kl_anneal_epochs <= MAX_EPOCHS, f"must be in [0, {MAX_EPOCHS}]"),
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
    ("data.binarize", lambda p: p.data.binarize in BINARIZATIONS, f"must be one of {', '.join(BINARIZATIONS)}"),
    ("snapshot_every", lambda p: p.snapshot_every >= 1, "must be >= 1"),
    ("eval.iw_samples", lambda p: 1 <= p.eval.iw_samples <= MAX_IW_SAMPLES, f"must be in [1, {MAX_IW_SAMPLES}]"),
    ("eval.binarized_samples", lambda p: 1 <= p.eval.binarized_samples <= MAX_IW_SAMPLES,
     f"must be in [1, {MAX_IW_SAMPLES}]"),
    ("device", lambda p: p.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
    ("precision", lambda p: p.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
    ("launcher", lambda p: _launcher_problem(p.launcher) is None, lambda p: _launcher_problem(p.launcher)),
    ("batch_size", lambda p: p.world_size is None or p.batch_size % p.world_size == 0,
     lambda p: f"must be divisible by the {p.world_size} processes the launcher starts"),
]


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    return parse_params(read_yaml(path), source=str(path))


def parse_params(raw: object, source: str = "params") -> Params:
    if raw is None:
        raise ParamsError(f"{source}: the file is empty; it must set the pipeline's parameters "
                          "(the committed params.yaml lists them all)")
    params = _build(Params, raw, prefix="", source=source)
    for key, holds, requirement in _RULES:
        if not holds(params):
            requirement = requirement(params) if callable(requirement) else requirement
            raise ParamsError(f"{source}: {key} {requirement} (got {_short(params.get(key))})")
    return params


def read_yaml(path: Path) -> object:
    """The YAML file at path as DVC parses params files (YAML 1.2); ParamsError naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: cannot be read ({one_line(error)})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> object:
    """YAML text as DVC parses it: ruamel.yaml with typ="safe" (dvc.utils.serialize.parse_yaml)."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as error:
        raise ParamsError(f"{source}: not valid YAML ({one_line(error)})") from None


def _launcher_problem(value: str) -> str | None:
    try:
        launch.parse(value)
    except launch.LauncherError as error:
        return f"is not usable: {error}"
    return None


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
        raise ParamsError(f"{source}: {key} must be {kind.__name__}, got {_short(value)}")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            value = math.inf
        if not math.isfinite(value):
            raise ParamsError(f"{source}: {key} must be a finite number, got {_short(value)}")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _suggest(key: str, fields: typing.Iterable[str], prefix: str) -> str:
    names = [f"{prefix}{name}" for name in fields]
    close = difflib.get_close_matches(f"{prefix}{key}", names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(names)})"
