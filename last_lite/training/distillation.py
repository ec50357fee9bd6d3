"""Path B: knowledge distillation from a frozen teacher into a LAST-Lite student.

``L = alpha*CE(student, y) + beta*tau^2*KL(p_teacher || p_student) + gamma*sum_i MSE(proj_i(s_i), t_i)``
with ``beta = 1 - alpha`` unless given; ``proj_i`` is a 1x1 convolution per stage from student to
teacher channels, trained with the student and dropped at export (it is not part of ``model``);
with ``gamma=0`` they are frozen (unused), not left out, so checkpoints have one layout.

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
from last_lite.training.checkpoints import load_checkpoint, load_model_weights
from last_lite.training.losses import feature_mimicry, soft_label_kl
from last_lite.training.path_c.masking import present_persons

quiet_frozen_modules()


# Model-spec fields that change what the teacher computes but none of its parameters: its weights
# load whatever they are, so the value it was trained with is checked against the config's.
TEACHER_FORWARD_FIELDS = ("person_mode",)


def checkpoint_model_spec(ckpt: str) -> dict | None:
    """The model spec a checkpoint (``hyper_parameters.model_spec``) or a zoo file (its index
    entry) records; None for a file that records none (a .safetensors no index lists)."""
    if str(ckpt).endswith(".safetensors"):
        from last_lite.zoo import zoo_entry_for_file

        found = zoo_entry_for_file(ckpt)
        return found[1].get("model_spec") if found else None
    return (load_checkpoint(ckpt).get("hyper_parameters") or {}).get("model_spec")


def checkpoint_model_name(ckpt: str) -> str | None:
    """The model a checkpoint (its ``model_spec``) or a zoo file (its index entry) holds."""
    try:
        return (checkpoint_model_spec(ckpt) or {}).get("name")
    except Exception:  # only a hint: the mismatch itself is the error
        return None


def check_teacher_forward(teacher: nn.Module, teacher_spec: dict, ckpt: str) -> None:
    """Refuse a teacher config whose :data:`TEACHER_FORWARD_FIELDS` differ from those the
    checkpoint was trained with (e.g. ``person_mode``), naming the override that fixes it."""
    recorded = checkpoint_model_spec(ckpt)
    if not recorded:
        return
    with torch.random.fork_rng():  # as in load_frozen_teacher: the student's RNG stays untouched
        trained = build_model(recorded)  # the model's defaults fill what the spec leaves out
    for field in TEACHER_FORWARD_FIELDS:
        ours, theirs = getattr(teacher, field, None), getattr(trained, field, None)
        if ours != theirs:
            override = f"{'' if field in teacher_spec else '+'}teacher.{field}={theirs}"
            raise ValueError(f"teacher checkpoint {ckpt} was trained with {field}={theirs!r} but the teacher "
                             f"config builds {field}={ours!r}: pass {override}")


def load_frozen_teacher(teacher_spec: dict, ckpt: str) -> nn.Module:
    """Build the teacher and load its checkpoint exactly; a mismatch fails with the keys and shapes,
    a person_mode other than the checkpoint's with the override that fixes it."""
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
    check_teacher_forward(teacher, teacher_spec, ckpt)
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
        student_mode, teacher_mode = (getattr(m, "person_mode", None) for m in (self.model, self.teacher))
        if self.gamma and student_mode != teacher_mode:  # stage features would differ in batch size
            raise ValueError(f"feature mimicry (kd.gamma={gamma}) needs teacher and student of one person_mode; "
                             f"the student has {student_mode!r}, the teacher {teacher_mode!r}: pass "
                             f"{'' if 'person_mode' in model_spec else '+'}student.person_mode={teacher_mode} "
                             "or kd.gamma=0")
        student_channels = self.model.stage_channels
        teacher_channels = self.teacher.stage_channels
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.projections = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False)
                                             for s, t in zip(student_channels, teacher_channels))
        if not self.gamma:
            # Unused without feature mimicry: frozen (not dropped, so checkpoints keep one layout),
            # else DDP (find_unused_parameters=False) waits for their gradients and fails at step 2.
            self.projections.requires_grad_(False)
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
            # person_mode fold with several slots: (N*M, ...) maps, some of empty slots
            several = x.shape[-1] > 1 and projected[0].shape[0] == x.shape[0] * x.shape[-1]
            mimicry = feature_mimicry(projected, teacher_stages, present_persons(x).flatten() if several else None)
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
