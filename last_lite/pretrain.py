"""Path C: ``python -m last_lite.pretrain model=last_lite_small data=nw_ucla`` (Hydra overrides).

MaskCLR self-supervised pretraining of the student's encoder (masked reconstruction + NT-Xent;
see :mod:`last_lite.training.path_c`; not the CVPR 2024 method of the same name). Writes the
usual run folder (config.yaml, checkpoints/, csv/, metrics.json with ``top1: null``) and
``encoder.safetensors`` (``encoder_path``): the encoder of the checkpoint with the lowest
``val/loss`` under the student's own parameter names (its BatchNorm statistics recomputed on
unmasked training clips, ``bn_recalibration_batches``), for
``python -m last_lite.train init_from=<encoder.safetensors>`` (or ``last_lite.distill``) and for
``python -m last_lite.probe encoder=<encoder.safetensors>``.

The recipe's options are the ``maskclr`` group (conf/maskclr/: ``maskclr=default``,
``maskclr.clr_weight=0.5``); the former spellings ``pretrain=<name>`` / ``pretrain.*`` are rewritten
to these with a warning (``last_lite.config_checks.legacy_overrides``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from last_lite.training.path_c.pretrain import run


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg).get("best_val_loss")


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "pretrain")
