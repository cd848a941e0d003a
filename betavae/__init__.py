"""A convolutional β-VAE on MNIST, as a reproducible DVC pipeline. The folders are the layers, each
importing only from those listed before it (tests/test_structure.py holds the rule):

    errors.py     the one kind of expected failure, and how every entry point reports it
    speed/        how the arithmetic runs: device, precision, a CPU kernel, CUDA graphs
    core/         the β-VAE itself: model, objective, data, augmentation, schedules, metrics
    pipeline/     what the stages share: params.yaml's schema, file formats, model files, MNIST's sources
    compat/       workarounds for other tools' internals, each with the versions it was written for
    training/     the training loop, its step, resuming, data-parallel runs
    uses/         a trained model put to use: Python API, `betavae` command, ONNX, explorer, figures
    experiments/  many runs: Optuna studies of DVC experiments, DVC's experiments table

`from betavae import api` is the trained model's Python API (betavae/uses/api.py), imported when
first named: importing the package itself imports nothing else.
"""

from __future__ import annotations

import importlib

_PUBLIC = {"api": "betavae.uses.api"}


def __getattr__(name: str):
    if name in _PUBLIC:
        return importlib.import_module(_PUBLIC[name])
    raise AttributeError(f"module 'betavae' has no attribute {name!r}")
