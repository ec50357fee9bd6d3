"""Path A: ``python -m last_lite.train model=last_e_v3_base data=nw_ucla`` (Hydra overrides)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from last_lite.training.runner import data_spec_for, run_phase
from last_lite.training.supervised import SupervisedModule


def run(cfg: DictConfig) -> dict:
    def build(model_spec: dict, datamodule) -> SupervisedModule:
        return SupervisedModule(model_spec, optim=OmegaConf.to_container(cfg.optim, resolve=True), sched=OmegaConf.to_container(cfg.sched, resolve=True),
                                data_spec=data_spec_for(datamodule), **cfg.module)

    return run_phase(cfg, build, command="train")


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)["top1"]


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "train")
