"""The training step: one optimiser step on one batch, the same code on every device. On one CUDA
device (`cuda_graphs: true`, one process, `compile: false`) it is captured once as a CUDA graph and
replayed, so a step costs one launch instead of several hundred kernels started from Python
(docs/performance.md has the measurements).

A step, whole: gather the batch from the device-resident uint8 images, augment it, binarize it
(data.binarize: dynamic), forward, loss, backward, clip the gradients, AdamW. Everything that changes
from one step to the next is read from tensors on the device, never from Python numbers, so that a
replayed graph reads it too: the epoch's order of the images (`order`, drawn once an epoch), the
step's place in it (`position`), and the learning rate and KL weight of every step of the epoch
(computed once an epoch by betavae/core/schedules.py and copied to the device). Random numbers come
from generators the graph knows (the run's shared generator, registered with it, and the device's
default one), whose states move on with every replay as they do with every eager step. The epoch's
sums of the reconstruction and KL terms and the first non-finite step are accumulated on the
device and read once an epoch.

Eagerly, the step gives exactly the numbers of passing those values from Python (so the CPU's
model is byte for byte what it was); under torchrun every process runs it eagerly, drawing the
augmentation and binarization for the whole batch and keeping its share, so what a step sees does
not depend on the number of processes (betavae/training/distributed.py).
"""

from __future__ import annotations

import torch

from betavae.core import schedules
from betavae.core.augment import draw_affine, warp
from betavae.core.data import bernoulli, to_float
from betavae.core.objective import training_loss
from betavae.training.state import Trainer

WARM_UP_STEPS = 3  # eager steps before a capture: they create AdamW's state and cuDNN's and cuBLAS's workspaces


class Step:
    """The run's training step. `start_epoch(epoch)`, then call it once per step, then `epoch_sums()`."""

    def __init__(self, trainer: Trainer, capture: bool):
        self.trainer = trainer
        params, device = trainer.params, trainer.compute.device
        self.steps = trainer.steps_per_epoch
        self.order = torch.zeros(self.steps, params.batch_size, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        # The CPU reads the learning rate back as a Python number in double precision (AdamW's
        # non-capturable path), so the table is float64 there: exactly the schedule's values. On CUDA
        # it stays on the device, in float32 like AdamW's own capturable state.
        lr_dtype = torch.float32 if device.type == "cuda" else torch.float64
        self.learning_rates = torch.zeros(self.steps, dtype=lr_dtype, device=device)
        self.kl_weights = torch.zeros(self.steps, dtype=torch.float32, device=device)
        self.learning_rate = torch.zeros((), dtype=lr_dtype, device=device)
        self.totals = torch.zeros(2, device=device)  # reconstruction and KL, summed over the epoch's steps
        self.first_bad = torch.full((1,), self.steps, dtype=torch.long, device=device)  # steps: none
        for group in trainer.optimizer.param_groups:  # the step sets this tensor; AdamW reads it
            group["lr"] = self.learning_rate
            group["capturable"] = device.type == "cuda"
        self.graph = self._capture() if capture else None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def start_epoch(self, epoch: int) -> None:
        """Draw the epoch's order of the training images (the last partial batch is dropped, so every
        step sees batch_size images; a fresh permutation covers it next time) and its schedules."""
        trainer, params = self.trainer, self.trainer.params
        generator = trainer.generator
        order = torch.randperm(len(trainer.train), generator=generator, device=generator.device)
        self.order.copy_(order[: self.steps * params.batch_size].view(self.steps, params.batch_size))
        progress = [epoch - 1 + step / self.steps for step in range(self.steps)]  # t of each step, in epochs
        rates = [schedules.learning_rate(t, params.base_lr, params.max_lr, params.warmup_epochs, params.epochs)
                 for t in progress]
        weights = [schedules.kl_weight(t, params.beta, params.kl_anneal_epochs) for t in progress]
        self.learning_rates.copy_(torch.tensor(rates, dtype=self.learning_rates.dtype))
        self.kl_weights.copy_(torch.tensor(weights, dtype=torch.float32))
        self.position.zero_()
        self.totals.zero_()
        self.first_bad.fill_(self.steps)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()

    def epoch_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction and KL summed over this process's steps, the first step whose loss was not
        finite or `steps`): tensors on the device, read by the caller once an epoch."""
        return self.totals, self.first_bad

    def _body(self) -> None:
        trainer, params = self.trainer, self.trainer.params
        batch = self.order.index_select(0, self.position).view(-1)  # (batch_size,) image indices
        share = trainer.world.share(params.batch_size)
        x = to_float(trainer.train.images.index_select(0, batch[share]))
        augment = params.augment
        if augment.rotation or augment.translate:
            theta = draw_affine(params.batch_size, augment.rotation, augment.translate, trainer.generator)[share]
            x = warp(x, theta.to(x.dtype), augment.interpolation)
        if params.data.binarize == "dynamic":
            uniform = torch.rand((params.batch_size, *x.shape[1:]), generator=trainer.generator,
                                 device=trainer.generator.device)[share]
            x = bernoulli(x, uniform)
        x = trainer.compute.to_layout(x)
        self.learning_rate.copy_(self.learning_rates.index_select(0, self.position).view(()))
        kl_weight = self.kl_weights.index_select(0, self.position).view(())
        with trainer.compute.autocast():
            out = trainer.step_forward(x, params.train_samples)
        terms = training_loss(out, x, kl_weight)
        trainer.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), params.grad_clip)
        trainer.optimizer.step()
        self.totals += torch.stack([terms.recon.detach(), terms.kl.detach()])
        finite = torch.isfinite(terms.loss.detach())
        self.first_bad.copy_(torch.minimum(self.first_bad, torch.where(finite, self.steps, self.position)))
        self.position += 1

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream, put back everything the warm-up changed, then record one step."""
        trainer = self.trainer
        saved = _Saved(trainer, [self.order, self.position, self.learning_rate, self.totals, self.first_bad])
        side = torch.cuda.Stream(trainer.compute.device)
        side.wait_stream(torch.cuda.current_stream(trainer.compute.device))
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_STEPS):
                self._body()
        torch.cuda.current_stream(trainer.compute.device).wait_stream(side)
        saved.restore()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(trainer.generator)
        trainer.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients it reuses
        with torch.cuda.graph(graph):
            self._body()
        return graph


class _Saved:
    """What a warm-up step changes, copied before it and written back in place after it, so that
    the captured graph, which reads those very tensors, starts from the run's true state."""

    def __init__(self, trainer: Trainer, buffers: list[torch.Tensor]):
        self.trainer = trainer
        self.tensors = [*trainer.model.state_dict().values(), *buffers]
        self.values = [tensor.detach().clone() for tensor in self.tensors]
        self.optimizer = {id(tensor): tensor.detach().clone() for state in trainer.optimizer.state.values()
                          for tensor in state.values() if torch.is_tensor(tensor)}
        self.generator = trainer.generator.get_state()
        self.default_generator = torch.cuda.get_rng_state(trainer.compute.device)

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, value in zip(self.tensors, self.values):
                tensor.copy_(value)
            for state in self.trainer.optimizer.state.values():
                for tensor in state.values():
                    if torch.is_tensor(tensor):
                        # AdamW creates its state lazily as zeros: a state the warm-up created goes back to that
                        previous = self.optimizer.get(id(tensor))
                        tensor.copy_(previous) if previous is not None else tensor.zero_()
        self.trainer.generator.set_state(self.generator)
        torch.cuda.set_rng_state(self.default_generator, self.trainer.compute.device)
