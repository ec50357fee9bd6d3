"""The LightningModules every training phase derives from.

:class:`PhaseModule` is the generic phase: the network (built from ``model_spec``), the optimiser
and schedule (from their configs), the non-finite-loss guard, the RNG state in checkpoints and
the optional compiled features. :class:`ClassifierPhase` adds what a labelled phase needs:
multi-clip logits, validation/test top-1/top-5, per-class accuracy and the confusion matrix.
A phase differs only in what it builds in ``__init__`` and in ``model_step`` (and MaskCLR,
which has no labels, in its own validation losses).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from last_lite.models.registry import average_clips, build_model
from last_lite.training.optim import (DEFAULT_OPTIM, DEFAULT_SCHED, build_optimizer, build_scheduler,
                                      weight_decay_groups)

log = logging.getLogger(__name__)

__all__ = ["ClassifierPhase", "PhaseModule", "weight_decay_groups"]


def batch_size_of(batch) -> int:
    return batch[0].shape[0] if isinstance(batch, (list, tuple)) else batch.shape[0]


class PhaseModule(L.LightningModule):
    """The generic phase: optimisation, the non-finite guard and exact resumption.

    ``model_spec`` is a plain dict (the model config: ``_target_`` and its arguments, plus the
    data's ``num_classes``, ``layout`` and ``in_channels``), saved in the checkpoint so any
    command rebuilds the network from it alone (:func:`last_lite.models.registry.build_model`).
    ``optim`` and ``sched`` are the ``conf/optim`` and ``conf/sched`` configs (partials).
    """

    def __init__(self, model_spec: dict, optim: dict | None = None, sched: dict | None = None,
                 data_spec: dict | None = None, max_nonfinite_steps: int = 5,
                 compile_features: bool = False):
        super().__init__()
        self.model_spec = dict(model_spec)
        self.model = build_model(self.model_spec)
        self.optim_cfg = dict(optim or DEFAULT_OPTIM)
        self.sched_cfg = dict(sched) if sched is not None else dict(DEFAULT_SCHED)
        self.data_spec = dict(data_spec or {})
        self.max_nonfinite_steps = max_nonfinite_steps
        self._nonfinite_streak = 0
        self._drop_step = False
        self.compile_features = bool(compile_features)
        self._compiled_features = None
        self.earlier_sittings_s: list[float] = []  # a resumed run's earlier sittings (checkpoint)
        self._sitting_started = time.monotonic()

    # -- the phase-specific part ------------------------------------------------------------
    def model_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the training loss and the named terms to log."""
        raise NotImplementedError

    # -- shared pieces ------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> dict:
        """The model's ``forward_features`` for a training step; with ``compile_features`` it
        runs through ``torch.compile``. Only the bound method is compiled, so parameter names,
        state dicts and checkpoints are those of the plain model."""
        if not self.compile_features:
            return self.model.forward_features(x)
        if self._compiled_features is None:
            self._compiled_features = torch.compile(self.model.forward_features)
        return self._compiled_features(x)

    def training_step(self, batch, batch_idx):
        loss, terms = self.model_step(batch)
        local = not torch.isfinite(loss)
        distributed = self._trainer is not None and self.trainer.world_size > 1
        # Every process skips together: one that skipped alone would leave the others waiting in
        # the gradient all-reduce.
        nonfinite = self.trainer.strategy.reduce_boolean_decision(local, all=False) if distributed else local
        if nonfinite:
            self._nonfinite_streak += 1
            log.warning("non-finite training loss (%s) at step %d: step skipped (%d in a row)",
                        loss.item() if local else "on another process", self.global_step,
                        self._nonfinite_streak)
            if self._nonfinite_streak >= self.max_nonfinite_steps:
                raise RuntimeError(
                    f"the training loss was NaN or inf for {self._nonfinite_streak} steps in a row; "
                    "stopping. Check the data for NaN joints, lower the learning rate or enable "
                    "gradient clipping (trainer.gradient_clip_val).")
            if not distributed:
                return None
            # Lightning refuses None under DDP, and every process must join the backward's
            # all-reduce: the (non-finite) gradients are dropped before the step instead.
            self._drop_step = True
            return loss
        self._nonfinite_streak = 0
        batch_size = batch_size_of(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    # Exact resume: the epoch after a checkpoint must draw the same shuffles, augmentations and
    # dropout masks as an uninterrupted run, so the RNG state travels with the checkpoint, and
    # ``precision: auto`` resumes in the precision recorded here (training/precision.py).
    # The training time of each sitting also travels with it, so a run split across sessions
    # reports its whole cost (metrics.json ``sittings_s``).
    def on_fit_start(self) -> None:
        self._sitting_started = time.monotonic()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_step:  # a skipped step (training_step): no update, momentum or weight decay
            self._drop_step = False
            optimizer.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        checkpoint["trainer_precision"] = str(self.trainer.precision)
        checkpoint["sittings_s"] = [*self.earlier_sittings_s, time.monotonic() - self._sitting_started]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is not None:
            torch.set_rng_state(state["torch"])
        self.earlier_sittings_s = [float(s) for s in checkpoint.get("sittings_s", [])]

    def trainable_modules(self) -> nn.Module:
        """What the optimiser trains (phases with extra heads override this)."""
        return self.model

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim_cfg, self.trainable_modules())
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(self.sched_cfg, optimizer, total_steps=total, steps_per_epoch=per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ClassifierPhase(PhaseModule):
    """A labelled phase: batches ``(x, y)``; validation and test report loss, top-1 and top-5;
    the test also gathers per-class accuracy and the confusion matrix (:meth:`test_results`)."""

    def __init__(self, model_spec: dict, **kwargs):
        super().__init__(model_spec, **kwargs)
        num_classes = self.model_spec.get("num_classes", 60)
        top_k = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")
            for stage in ("val", "test")})
        self.metrics.update({f"{stage}_top5": MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
                             for stage in ("val", "test")})
        self.test_per_class = MulticlassAccuracy(num_classes, average="none")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; a 6-D batch (N, k, C, T, V, M) holds k temporal crops whose logits are averaged."""
        return average_clips(self.model, x)

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self.predict_logits(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=y.shape[0], sync_dist=True)
        for k in ("top1", "top5"):
            metric = self.metrics[f"{stage}_{k}"]
            metric(logits, y)
            self.log(f"{stage}/{k}", metric, prog_bar=k == "top1", batch_size=y.shape[0])
        if stage == "test":
            self.test_per_class.update(logits, y)
            self.test_confusion.update(logits, y)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.test_per_class.reset()
        self.test_confusion.reset()

    def test_results(self) -> dict[str, Any]:
        """Per-class accuracy and the confusion matrix of the last test run (plain lists); a
        class without test samples has accuracy None (torchmetrics reports 0 for it)."""
        confusion = self.test_confusion.compute()
        accuracy = self.test_per_class.compute()
        return {"per_class_accuracy": [acc if samples else None for acc, samples
                                       in zip(accuracy.tolist(), confusion.sum(dim=1).tolist())],
                "confusion_matrix": confusion.tolist()}
