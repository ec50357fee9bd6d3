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


def feature_mimicry(projected: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i MSE(proj_i(student_i), teacher_i)`` over the stages, whose shapes must match."""
    for i, (p, t) in enumerate(zip(projected, targets)):
        if p.shape != t.shape:  # checked: MSE would broadcast, or fail naming no cause
            raise ValueError(f"feature mimicry: stage {i} is {tuple(p.shape)} in the student (projected) but "
                             f"{tuple(t.shape)} in the teacher. The first size is batch x persons: teacher "
                             "and student need one person_mode (teacher.person_mode, student.person_mode); "
                             "the others need the same temporal strides and joints")
    return sum(F.mse_loss(p, t) for p, t in zip(projected, targets))
