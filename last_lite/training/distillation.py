"""Path B: knowledge distillation from a frozen teacher into a LAST-Lite student.

``L = alpha*CE(student, y) + beta*tau^2*KL(p_teacher || p_student) + gamma*sum_i MSE(proj_i(s_i), t_i)``
with ``beta = 1 - alpha`` unless given; ``proj_i`` is a 1x1 convolution per stage from student to
teacher channels, trained with the student and dropped at export (it is not part of ``model``).

``teacher_precision="bf16"`` runs the frozen teacher under bfloat16 autocast: about 1.7x faster on
CPUs with AMX or AVX512-BF16 (its stage features stay within about 0.6% relative error of float32);
the student always trains in the trainer's precision. ``teacher.precision: auto`` in the config picks
bf16 only where it is native (training/precision.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from last_lite.models.registry import build_model
from last_lite.console import quiet_frozen_modules
from last_lite.training.base import ClassifierPhase
from last_lite.training.checkpoints import load_model_weights
from last_lite.training.losses import feature_mimicry, soft_label_kl

quiet_frozen_modules()


def checkpoint_model_name(ckpt: str) -> str | None:
    """The model a checkpoint (its ``model_spec``) or a zoo file (its index entry) holds."""
    try:
        if str(ckpt).endswith(".safetensors"):
            from last_lite.zoo import zoo_entry_for_file

            found = zoo_entry_for_file(ckpt)
            return found[1]["model_spec"]["name"] if found else None
        from last_lite.training.checkpoints import load_checkpoint

        return ((load_checkpoint(ckpt).get("hyper_parameters") or {}).get("model_spec") or {}).get("name")
    except Exception:  # only a hint: the mismatch itself is the error
        return None


def load_frozen_teacher(teacher_spec: dict, ckpt: str) -> nn.Module:
    """Build the teacher and load its checkpoint exactly; a mismatch fails with the keys and shapes."""
    # Built on a forked RNG: the teacher's (overwritten) init must not shift the student's
    # shuffles and dropout, so alpha=1, gamma=0 reproduces Path A exactly.
    with torch.random.fork_rng():
        teacher = build_model(teacher_spec)
    weights = load_model_weights(ckpt)
    expected = teacher.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:8]))
        held = checkpoint_model_name(ckpt)
        hint = (f"; it holds a {held!r}: pass model@teacher={held}" if held and held != teacher_spec.get("name")
                else "")
        raise ValueError(f"teacher checkpoint {ckpt} does not fit teacher config "
                         f"{teacher_spec.get('name')!r}{hint}: " + " | ".join(parts))
    teacher.load_state_dict(weights)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


TEACHER_PRECISIONS = ("32", "bf16")


class DistillModule(ClassifierPhase):
    def __init__(self, model_spec: dict, teacher_spec: dict, teacher_ckpt: str, alpha: float = 0.5,
                 beta: float | None = None, tau: float = 4.0, gamma: float = 0.1,
                 label_smoothing: float = 0.1, aux_weight: float = 0.01, teacher_precision: str = "32",
                 teacher_compile: bool = False, **kwargs):
        super().__init__(model_spec, **kwargs)
        self.save_hyperparameters()
        if str(teacher_precision) not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher precision {teacher_precision!r}: expected one of "
                             f"{', '.join(TEACHER_PRECISIONS)}")
        self.teacher_precision = str(teacher_precision)
        self.teacher = load_frozen_teacher(teacher_spec, teacher_ckpt)
        self.teacher_compile = bool(teacher_compile)
        self._compiled_teacher = None
        self.alpha, self.tau, self.gamma = alpha, tau, gamma
        self.beta = 1.0 - alpha if beta is None else beta
        self.label_smoothing, self.aux_weight = label_smoothing, aux_weight
        student_channels = self.model.stage_channels
        teacher_channels = self.teacher.stage_channels
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.projections = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False)
                                             for s, t in zip(student_channels, teacher_channels))
        self.teacher_top1 = MulticlassAccuracy(self.model_spec["num_classes"], top_k=1, average="micro")

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: BN statistics and dropout stay in inference mode
        return self

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "projections": self.projections})

    def teacher_features(self, x: torch.Tensor) -> dict:
        """The teacher's ``forward_features``; in training steps through ``torch.compile`` when
        ``teacher_compile`` (training batches have one shape; evaluation's vary, so it stays eager)."""
        if not (self.teacher_compile and self.training):
            return self.teacher.forward_features(x)
        if self._compiled_teacher is None:
            self._compiled_teacher = torch.compile(self.teacher.forward_features)
        return self._compiled_teacher(x)

    def run_teacher(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The frozen teacher's stage features and logits, in float32 whatever it ran in."""
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16,
                                             enabled=self.teacher_precision == "bf16"):
            features = self.teacher_features(x)
            logits = self.teacher.forward_head(features["pooled"])
        return [s.float() for s in features["stages"]], logits.float()

    def model_step(self, batch):
        x, y = batch[0], batch[1]
        teacher_stages, teacher_logits = self.run_teacher(x)
        features = self.features(x)
        logits = self.model.forward_head(features["pooled"])
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        kl = soft_label_kl(logits, teacher_logits, self.tau)
        loss = self.alpha * ce + self.beta * kl
        terms = {"ce": ce.detach(), "kl": kl.detach()}
        if self.gamma:
            projected = [proj(s) for proj, s in zip(self.projections, features["stages"])]
            mimicry = feature_mimicry(projected, teacher_stages)
            loss = loss + self.gamma * mimicry
            terms["feature_mse"] = mimicry.detach()
        aux = self.model.auxiliary_loss(features["pooled"])
        if aux is not None:
            loss = loss + self.aux_weight * aux
            terms["aux"] = aux.detach()
        return loss, terms

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch[0], batch[1]
        self.teacher_top1(self.run_teacher(x)[1], y)
        self.log("val/teacher_top1", self.teacher_top1, batch_size=y.shape[0])
