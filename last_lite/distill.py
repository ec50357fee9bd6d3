"""Path B: ``python -m last_lite.distill teacher.ckpt=<teacher .ckpt> model@student=last_lite_small``.

Teacher and student are two choices of the one ``model`` config group (``model@teacher``,
``model@student``); the legacy ``student=<name>`` / ``teacher=<name>`` (from the former
conf/student and conf/teacher copies) are rewritten to them with a warning.

Sweeps: ``python -m last_lite.distill -m distill.alpha=0.3,0.5,0.7 distill.tau=2,4,6`` and then
``python -m last_lite.summarize <multirun folder>`` for one table of the swept values.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from last_lite.training.distillation import DistillModule
from last_lite.training.runner import data_spec_for, model_spec_for, run_phase


log = logging.getLogger(__name__)
LEGACY_GROUPS = ("student", "teacher")


def legacy_overrides(argv: list[str]) -> list[str]:
    """``student=x`` -> ``model@student=x`` and ``teacher=x`` -> ``model@teacher=x``."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in LEGACY_GROUPS:
            log.warning("%s is the former spelling of model@%s=%s; rewritten", arg, key, value)
            arg = f"model@{key}={value}"
        out.append(arg)
    return out


def run(cfg: DictConfig) -> dict:
    def build(student_spec: dict, datamodule) -> DistillModule:
        teacher_cfg = OmegaConf.masked_copy(cfg.teacher, [k for k in cfg.teacher
                                                          if k not in ("ckpt", "precision")])
        return DistillModule(student_spec, teacher_spec=model_spec_for(teacher_cfg, datamodule),
                             teacher_ckpt=cfg.teacher.ckpt, teacher_precision=cfg.teacher.precision,
                             optim=OmegaConf.to_container(cfg.optim, resolve=True), sched=OmegaConf.to_container(cfg.sched, resolve=True),
                             data_spec=data_spec_for(datamodule), **cfg.distill, **cfg.module)

    return run_phase(cfg, build, command="distill", model_key="student")


@hydra.main(config_path="../conf", config_name="distill", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)["top1"]


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    sys.argv[1:] = legacy_overrides(sys.argv[1:])
    run_cli(main, "distill")
