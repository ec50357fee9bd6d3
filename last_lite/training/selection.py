"""Which weights a run hands on: an exponential moving average, chosen by a rule fixed in advance.

Best-on-validation needs a hold-out large enough to rank epochs: on NW-UCLA's 102 clips (one
clip = 1 point) it picked a validation spike that cost 5 test points. The rule:

- ``selection=auto`` (the default): ``best_val`` when the validation split has at least
  ``MIN_VAL_TO_RANK`` clips, otherwise ``last``;
- ``last``: the final weights, i.e. the EMA of the weights when :class:`EMAWeights` is on (the
  default callback), which smooths the last epochs without looking at any held-out data;
- ``best_val``: the checkpoint best on the validation split (of the EMA weights when it is on).

Threshold: with n validation clips the standard error of an accuracy near 90% is
``sqrt(0.09 / n)``, 3 points at n = 102 and 0.67 at n = 2,000, where differences of a point
or two between epochs begin to be distinguishable; NTU's 10% hold-outs (4,000+ clips) pass it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

MIN_VAL_TO_RANK = 2000
RULES = ("auto", "last", "best_val")


def selection_rule(rule: str, val_size: int) -> str:
    """``auto`` resolved against the validation size: ``best_val`` or ``last``."""
    if rule not in RULES:
        raise ValueError(f"selection must be one of {RULES}, got {rule!r}")
    if rule != "auto":
        return rule
    return "best_val" if val_size >= MIN_VAL_TO_RANK else "last"


def hold_out_fingerprint(datamodule) -> str | None:
    """A hash of the validation samples' names (None without them): runs rank on the same hold-out
    only when it is equal, however many clips each holds (a data seed moves a stratified one)."""
    indices, store = getattr(datamodule, "val_indices", None), getattr(datamodule, "store", None)
    if indices is None or not len(indices) or store is None:
        return None
    names = sorted(store.names[i] for i in indices)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def ema_update(decay: float) -> Callable[[list, list, Any], None]:
    """An ``AveragedModel`` ``multi_avg_fn``: ``avg += (1 - d) * (cur - avg)`` on every float
    tensor at once, with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates. The warm-up
    keeps the first steps from lingering: BatchNorm's running variance of a stream starts at 1 and
    settles orders of magnitude lower, and a plain EMA of it stayed 100x too large for hundreds of
    steps, which left a short run's averaged model at chance. Integer buffers (BatchNorm's batch
    counts) are copied."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, weight)

    return update


class EMAWeights(EMAWeightAveraging):
    """Lightning's EMA callback with its decay set from a horizon in epochs, so one setting fits
    a 30-epoch and a 65-epoch recipe: ``decay = 1 - 1 / (horizon_epochs * steps_per_epoch)``,
    reached after a warm-up (:func:`ema_update`).

    Validation runs on the averaged weights and checkpoints hold them in ``state_dict`` (the raw
    weights travel in ``current_model_state`` for exact resumption), so evaluate, export, the zoo
    and distillation's teacher all read the averaged model.
    """

    def __init__(self, horizon_epochs: float = 2.0, **kwargs: Any) -> None:
        if horizon_epochs <= 0:
            raise ValueError(f"horizon_epochs must be > 0, got {horizon_epochs}")
        super().__init__(**kwargs)
        self.horizon_epochs = float(horizon_epochs)
        self.decay: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        steps = max(1, int(trainer.estimated_stepping_batches))
        steps_per_epoch = steps / max(1, int(trainer.max_epochs or 1))
        self.decay = 1.0 - 1.0 / max(1.0, self.horizon_epochs * steps_per_epoch)
        self._average_model.avg_fn = None
        self._average_model.multi_avg_fn = ema_update(self.decay)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Outside fitting (``trainer.validate`` of a checkpoint) the loaded weights are already the
        # average; Lightning's callback would swap in the average left over from fitting instead.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Lightning's callback would load the raw weights into the model when a fitted trainer
        # tests a checkpoint; outside fitting, the checkpoint's state_dict (the average) is wanted.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
