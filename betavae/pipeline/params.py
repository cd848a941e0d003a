"""The schema of params.yaml: every param's type, default, bounds and the stages whose outputs it
changes; read and validated once into a typed, frozen `Params`.

Every stage calls `load_params`; a bad file fails before any work starts, with one line naming the
key. The file is read as DVC reads it (betavae/pipeline/yamlfile.py: YAML 1.2), so what `dvc exp run
-S weight_decay=1e-6` writes is what trains; floats accept ints (`-S beta=4` writes one). Every number
is bounded by what the code can do with it (memory: betavae/core/footprint.py).

Each leaf names the stages whose outputs it changes (`_param(default, TRAIN, ...)`): dvc.yaml's
`params:` lists are derived from them (`stage_params`, written by scripts/dvc_yaml.py and checked by
tests/test_dvc_yaml.py), model.pt records the training ones, and a training checkpoint is resumed
only when they match. A new param is a field here and a line in params.yaml.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from betavae.core.idx import MNIST_TRAIN_IMAGES
from betavae.errors import BetaVAEError
from betavae.pipeline import dotted, launch, typed, yamlfile

PARAMS_FILE = "params.yaml"  # what dvc.yaml's stages read and `dvc exp run -S` edits
TRAIN, EVALUATE, PLOT, EXPORT = "train", "evaluate", "plot", "export"  # the stages that read params
DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when present (betavae/speed/runtime.py)
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 on the CPU
INTERPOLATIONS = ("nearest", "bilinear")  # how augmented images are resampled (betavae/core/augment.py)
BINARIZATIONS = ("none", "dynamic")  # grey pixels, or a fresh Bernoulli draw each time (betavae/core/data.py)
SELECTION_METRICS = ("loss", "nll")  # what picks the saved epoch (betavae/training/loop.py)
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
MAX_EPOCHS = 100_000
MAX_LATENT_DIM = 65_536  # beyond this the latent layers alone outgrow any single machine's memory
MAX_IW_SAMPLES = 100_000
MAX_TRAIN_SAMPLES = 1_024


class ParamsError(BetaVAEError, ValueError):
    """A params.yaml problem; the message names the key and says what is wrong."""


def _param(default, *stages: str):
    return dataclasses.field(default=default, metadata={"stages": stages})


@dataclasses.dataclass(frozen=True)
class Augment:
    rotation: float = _param(5.0, TRAIN)  # max absolute rotation, degrees
    translate: float = _param(0.05, TRAIN)  # max absolute shift, fraction of the image side
    interpolation: str = _param("nearest", TRAIN)  # how warped images are resampled


@dataclasses.dataclass(frozen=True)
class Data:
    val_size: int = _param(5_000, TRAIN)  # training images held out to pick the best epoch
    limit: int = _param(0, TRAIN, EVALUATE, PLOT, EXPORT)  # 0: all images; N: the first N of each set
    binarize: str = _param("none", TRAIN)  # none: grey pixels; dynamic: a fresh Bernoulli draw each time


@dataclasses.dataclass(frozen=True)
class Select:
    metric: str = _param("loss", TRAIN)  # validation metric that picks the saved epoch
    samples: int = _param(100, TRAIN)  # importance samples per validation image for metric nll
    patience: int = _param(0, TRAIN)  # stop after this many epochs without a better metric; 0: never


@dataclasses.dataclass(frozen=True)
class Eval:
    iw_samples: int = _param(100, EVALUATE)  # importance samples per test image for the NLL estimate
    binarized_samples: int = _param(100, EVALUATE)  # the same on the binarized test set (papers: 5000)


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int = _param(42, TRAIN, EVALUATE, PLOT)
    epochs: int = _param(120, TRAIN)
    beta: float = _param(0.8, TRAIN)
    train_samples: int = _param(1, TRAIN)  # 1: the ELBO; k > 1: the importance-weighted bound
    z_dim: int = _param(32, TRAIN)
    base_lr: float = _param(1e-4, TRAIN)
    max_lr: float = _param(3e-4, TRAIN)
    batch_size: int = _param(256, TRAIN)
    warmup_epochs: int = _param(10, TRAIN)
    kl_anneal_epochs: int = _param(20, TRAIN)
    weight_decay: float = _param(1e-5, TRAIN)
    grad_clip: float = _param(1.0, TRAIN)
    dropout: float = _param(0.1, TRAIN)
    augment: Augment = Augment()
    data: Data = Data()
    select: Select = Select()
    snapshot_every: int = _param(10, TRAIN)
    eval: Eval = Eval()
    device: str = _param("auto", TRAIN, EVALUATE)
    precision: str = _param("auto", TRAIN, EVALUATE)
    channels_last: bool = _param(True, TRAIN, EVALUATE)
    compile: bool = _param(False, TRAIN)
    cuda_graphs: bool = _param(True, TRAIN)
    launcher: str = _param("python", TRAIN)

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

    def select_keys(self, keys: typing.Iterable[str]) -> dict:
        """The nested dict of just these keys ("beta", "data.limit", or a whole group "augment")."""
        return dotted.select(self.to_dict(), keys)

    def training(self) -> dict:
        """The params training's outputs depend on, nested: what model.pt and a checkpoint record."""
        return self.select_keys(stage_params(TRAIN))


def stage_params(stage: str, schema: type = Params, prefix: str = "") -> tuple[str, ...]:
    """The keys whose values change `stage`'s outputs, in schema order: a group whose every leaf
    does is named as the group ("augment"), else leaf by leaf ("data.limit")."""
    keys = []
    for field in dataclasses.fields(schema):
        kind = typing.get_type_hints(schema)[field.name]
        if dataclasses.is_dataclass(kind):
            inner = stage_params(stage, kind, f"{prefix}{field.name}.")
            every = all(stage in leaf.metadata["stages"] for leaf in dataclasses.fields(kind))
            keys += [f"{prefix}{field.name}"] if every else list(inner)
        elif stage in field.metadata["stages"]:
            keys.append(f"{prefix}{field.name}")
    return tuple(keys)


def _between(key: str, low, high, unit: str = ""):
    return key, lambda p: low <= p.get(key) <= high, f"must be in [{low}, {high}]{unit}"


def _one_of(key: str, choices: tuple[str, ...]):
    return key, lambda p: p.get(key) in choices, f"must be one of {', '.join(choices)}"


# (key, predicate, what the value must be[, what to set to fix it]): checked after the types, in this order.
_RULES: list[tuple] = [
    _between("seed", 0, MAX_SEED, " (a 64-bit seed)"),
    _between("epochs", 1, MAX_EPOCHS),
    ("beta", lambda p: p.beta >= 0, "must be >= 0"),
    _between("train_samples", 1, MAX_TRAIN_SAMPLES),
    _between("z_dim", 1, MAX_LATENT_DIM),
    ("base_lr", lambda p: p.base_lr > 0, "must be > 0"),
    ("max_lr", lambda p: p.max_lr > 0, "must be > 0"),
    ("base_lr", lambda p: p.base_lr <= p.max_lr, lambda p: f"must be <= max_lr ({p.max_lr!r})",
     lambda p: f"set it to at most {p.max_lr!r} (-S base_lr={p.max_lr!r}), or max_lr to at least {p.base_lr!r}"),
    ("batch_size", lambda p: p.batch_size >= 1, "must be >= 1"),
    _between("warmup_epochs", 0, MAX_EPOCHS),
    _between("kl_anneal_epochs", 0, MAX_EPOCHS),
    ("weight_decay", lambda p: p.weight_decay >= 0, "must be >= 0"),
    ("grad_clip", lambda p: p.grad_clip > 0, "must be > 0"),
    ("dropout", lambda p: 0 <= p.dropout < 1, "must be in [0, 1)"),
    _between("augment.rotation", 0, 180, " degrees"),
    ("augment.translate", lambda p: 0 <= p.augment.translate < 1, "must be in [0, 1)"),
    _one_of("augment.interpolation", INTERPOLATIONS),
    ("data.limit", lambda p: p.data.limit == 0 or 2 <= p.data.limit <= MNIST_TRAIN_IMAGES,
     f"must be 0 (all) or in [2, {MNIST_TRAIN_IMAGES}] (an image to train on, one to validate on)"),
    ("data.val_size", lambda p: 1 <= p.data.val_size < p.pool_images,
     lambda p: f"must be >= 1 and smaller than {_pool(p)}",
     lambda p: f"set it between 1 and {p.pool_images - 1}, e.g. -S data.val_size={(p.pool_images + 7) // 8}"),
    ("batch_size", lambda p: p.batch_size <= p.train_images,
     lambda p: f"must not exceed the {p.train_images} training images, {_pool(p)} less data.val_size "
               f"({p.data.val_size})",
     lambda p: f"set it to at most {p.train_images}, e.g. -S batch_size={2 ** (p.train_images.bit_length() - 1)}"
               + (f", or data.val_size to at most {p.pool_images - p.batch_size}" if p.pool_images > p.batch_size
                  else "")),
    _one_of("data.binarize", BINARIZATIONS),
    _one_of("select.metric", SELECTION_METRICS),
    _between("select.samples", 1, MAX_IW_SAMPLES),
    _between("select.patience", 0, MAX_EPOCHS),
    ("snapshot_every", lambda p: p.snapshot_every >= 1, "must be >= 1"),
    _between("eval.iw_samples", 1, MAX_IW_SAMPLES),
    _between("eval.binarized_samples", 1, MAX_IW_SAMPLES),
    _one_of("device", DEVICES),
    _one_of("precision", PRECISIONS),
    ("launcher", lambda p: _launcher_problem(p.launcher) is None, lambda p: _launcher_problem(p.launcher)),
    ("batch_size", lambda p: p.world_size is None or p.batch_size % p.world_size == 0,
     lambda p: f"must be divisible by the {p.world_size} processes the launcher starts",
     lambda p: f"set it to a multiple of {p.world_size}, e.g. -S batch_size="
               f"{max(p.world_size, p.batch_size - p.batch_size % p.world_size)}"),
]


def _pool(p: Params) -> str:  # what the validation images are held out of
    return f"data.limit ({p.data.limit})" if p.data.limit else f"MNIST's {MNIST_TRAIN_IMAGES} training images"


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yamlfile.read(path)
    except yamlfile.YamlError as error:
        raise ParamsError(str(error)) from None
    return parse_params(raw, source=str(path))


def parse_params(raw: object, source: str = "params") -> Params:
    if raw is None:
        raise ParamsError(f"{source}: the file is empty; it must set the pipeline's parameters "
                          "(the committed params.yaml lists them all)")
    params = typed.build(Params, raw, source, ParamsError)
    for key, holds, requirement, *fix in _RULES:  # fix: what to set to what, for a rule between keys
        if not holds(params):
            requirement = requirement(params) if callable(requirement) else requirement
            raise ParamsError(f"{source}: {key} {requirement} (got {typed.short(params.get(key))})"
                              + "".join(f": {advice(params)}" for advice in fix))
    return params


def _launcher_problem(value: str) -> str | None:
    try:
        launch.parse(value)
    except launch.LauncherError as error:
        return f"is not usable: {error}"
    return None
