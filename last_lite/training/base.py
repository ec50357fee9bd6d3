"""The common LightningModule of every training phase.

A phase differs only in what it builds in ``__init__`` and in ``model_step``; the optimiser
groups, schedules, metrics, multi-clip evaluation and the non-finite-loss guard live here once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from last_lite.models.registry import create_model
from last_lite.training import schedules

log = logging.getLogger(__name__)

# Parameter names (suffixes) that never get weight decay besides biases and norm weights:
# gate/attention alphas, learnable edges (LAST: edge_weight, EfficientGCN: edge) and the pooling gate.
NO_DECAY_SUFFIXES = ("alpha", "edge_weight", ".edge", "pool.gate")


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed conv/linear weights, and everything in the no-decay set."""
    decay, no_decay = [], []
    extra = set(getattr(model, "no_weight_decay", lambda: ())())
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) or name in extra:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class PhaseModule(L.LightningModule):
    """Shared optimisation, evaluation and logging for every phase.

    ``model_spec`` is a plain dict for ``create_model`` (name, num_classes, layout, overrides),
    saved in the checkpoint so any command can rebuild the network from it alone.
    """

    def __init__(self, model_spec: dict, optim: dict | None = None, sched: dict | None = None,
                 data_spec: dict | None = None, max_nonfinite_steps: int = 5,
                 compile_features: bool = False):
        super().__init__()
        self.model_spec = dict(model_spec)
        self.model = create_model(**self.model_spec)
        self.optim_cfg = dict(optim or {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 4e-4})
        self.sched_cfg = dict(sched or {"name": "cosine_warmup", "warmup_epochs": 5})
        self.data_spec = dict(data_spec or {})
        self.max_nonfinite_steps = max_nonfinite_steps
        self._nonfinite_streak = 0
        self.compile_features = bool(compile_features)
        self._compiled_features = None
        num_classes = self.model_spec.get("num_classes", 60)
        top_k = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")
            for stage in ("val", "test")})
        self.metrics.update({f"{stage}_top5": MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
                             for stage in ("val", "test")})
        self.test_per_class = MulticlassAccuracy(num_classes, average="none")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

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

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; a 6-D batch (N, k, C, T, V, M) holds k temporal crops whose logits are averaged."""
        if x.dim() == 6:
            n, k = x.shape[:2]
            return self.model(x.flatten(0, 1)).view(n, k, -1).mean(dim=1)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        loss, terms = self.model_step(batch)
        if not torch.isfinite(loss):
            self._nonfinite_streak += 1
            log.warning("non-finite training loss (%s) at step %d: step skipped (%d in a row)",
                        loss.item(), self.global_step, self._nonfinite_streak)
            if self._nonfinite_streak >= self.max_nonfinite_steps:
                raise RuntimeError(
                    f"the training loss was NaN or inf for {self._nonfinite_streak} steps in a row; "
                    "stopping. Check the data for NaN joints, lower the learning rate or enable "
                    "gradient clipping (trainer.gradient_clip_val).")
            return None
        self._nonfinite_streak = 0
        batch_size = batch[0].shape[0] if isinstance(batch, (list, tuple)) else batch.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

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
        """Per-class accuracy and the confusion matrix of the last test run (plain lists)."""
        return {"per_class_accuracy": self.test_per_class.compute().tolist(),
                "confusion_matrix": self.test_confusion.compute().tolist()}

    # Exact resume: the epoch after a checkpoint must draw the same shuffles, augmentations and
    # dropout masks as an uninterrupted run, so the RNG state travels with the checkpoint.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is not None:
            torch.set_rng_state(state["torch"])

    def trainable_modules(self) -> nn.Module:
        """What the optimiser trains (phases with extra heads override this)."""
        return self.model

    def configure_optimizers(self):
        cfg = dict(self.optim_cfg)
        weight_decay = cfg.pop("weight_decay", 0.0)
        optimizer = torch.optim.SGD(weight_decay_groups(self.trainable_modules(), weight_decay), **cfg)
        sched = dict(self.sched_cfg)
        name = sched.pop("name", "cosine_warmup")
        if name in (None, "none", "constant"):
            return optimizer
        factory: Callable = {"cosine_warmup": schedules.cosine_warmup, "sgdr": schedules.sgdr,
                             "step_warmup": schedules.step_warmup}[name]
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = factory(optimizer, total_steps=total, steps_per_epoch=per_epoch, **sched)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
