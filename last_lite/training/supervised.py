"""Path A: supervised training with label smoothing and the model's auxiliary (IB) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from last_lite.training.base import ClassifierPhase


class SupervisedModule(ClassifierPhase):
    def __init__(self, model_spec: dict, label_smoothing: float = 0.1, aux_weight: float = 0.01,
                 **kwargs):
        super().__init__(model_spec, **kwargs)
        self.save_hyperparameters()
        self.label_smoothing = label_smoothing
        self.aux_weight = aux_weight

    def model_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch[0], batch[1]
        features = self.features(x)
        logits = self.model.forward_head(features["pooled"])
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        terms = {"ce": ce.detach()}
        aux = self.model.auxiliary_loss(features["pooled"])
        if aux is None:
            return ce, terms
        terms["aux"] = aux.detach()
        return ce + self.aux_weight * aux, terms
