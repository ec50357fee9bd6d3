"""Loss terms shared by the phases."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * KL(softmax(teacher/tau) || softmax(student/tau))``, batch-mean reduction, in float32
    (CPU autocast would keep bf16 logits' log-softmax in bf16)."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    return F.kl_div(F.log_softmax(student_logits / tau, dim=1), F.log_softmax(teacher_logits / tau, dim=1),
                    reduction="batchmean", log_target=True) * tau ** 2


def feature_mimicry(projected: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                    present: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i MSE(proj_i(student_i), teacher_i)`` over the stages, whose shapes must match.

    ``present`` (one bool per map of the first dimension: the persons folded into the batch): the
    MSE is the mean over the maps of persons present only. An empty person slot is zeros in, and
    the teacher's constant answer to zeros is nothing to learn (most two-person slots of NTU are
    empty)."""
    for i, (p, t) in enumerate(zip(projected, targets)):
        if p.shape != t.shape:  # checked: MSE would broadcast, or fail naming no cause
            raise ValueError(f"feature mimicry: stage {i} is {tuple(p.shape)} in the student (projected) but "
                             f"{tuple(t.shape)} in the teacher. The first size is batch x persons: teacher "
                             "and student need one person_mode (teacher.person_mode, student.person_mode); "
                             "the others need the same temporal strides and joints")
    if present is None or bool(present.all()):
        return sum(F.mse_loss(p, t) for p, t in zip(projected, targets))
    weights = present.float() / present.sum().clamp(min=1)
    return sum((F.mse_loss(p, t, reduction="none").flatten(1).mean(1) * weights).sum()
               for p, t in zip(projected, targets))
