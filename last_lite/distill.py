"""Path B: ``python -m last_lite.distill teacher.ckpt=<teacher .ckpt> model@student=last_lite_small``.

Teacher and student are two choices of the one ``model`` config group (``model@teacher``,
``model@student``); the loss weights are the ``kd`` group (conf/kd/: ``kd=small``, ``kd.alpha=0.3``).
The former spellings ``student=<name>`` / ``teacher=<name>`` (from the former conf/student and
conf/teacher copies) and ``distill=<preset>`` / ``distill.*`` (the former name of conf/kd/) are
rewritten to these with a warning (``last_lite.config_checks.legacy_overrides``, in ``run_cli``).

Sweeps: ``python -m last_lite.distill -m kd.alpha=0.3,0.5,0.7 kd.tau=2,4,6`` and then
``python -m last_lite.summarize <multirun folder>`` for one table of the swept values.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from last_lite.training.distillation import DistillModule
from last_lite.training.precision import checkpoint_precisions, resolve_teacher_precision
from last_lite.training.runner import data_spec_for, model_spec_for, run_phase


def run(cfg: DictConfig) -> dict:
    def build(student_spec: dict, datamodule) -> DistillModule:
        teacher_cfg = OmegaConf.masked_copy(cfg.teacher, [k for k in cfg.teacher
                                                          if k not in ("ckpt", "precision", "compile")])
        return DistillModule(student_spec, teacher_spec=model_spec_for(teacher_cfg, datamodule),
                             teacher_ckpt=cfg.teacher.ckpt, teacher_precision=resolve_teacher_precision(
                                 cfg.teacher.precision, cfg.trainer.get("accelerator", "auto"),
                                 checkpoint_precisions(cfg.get("ckpt_path"))),
                             teacher_compile=bool(cfg.teacher.get("compile", False)),
                             optim=OmegaConf.to_container(cfg.optim, resolve=True), sched=OmegaConf.to_container(cfg.sched, resolve=True),
                             data_spec=data_spec_for(datamodule), **cfg.kd, **cfg.module)

    return run_phase(cfg, build, command="distill", model_key="student")


@hydra.main(config_path="../conf", config_name="distill", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)["top1"]


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "distill")
