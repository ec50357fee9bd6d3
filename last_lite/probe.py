"""Linear probe: ``python -m last_lite.probe encoder=<encoder.safetensors> model=... data=...``.

``encoder=null`` probes a randomly initialised encoder (the baseline a pretrained one must beat).
Writes ``metrics.json`` (command ``probe``: test top-1/top-5/per-class of the linear classifier,
plus train top-1, feature sizes and what the encoder file loaded) and ``config.yaml`` to the run
folder. See :mod:`last_lite.training.path_c`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from last_lite.training.path_c.probe import run


@hydra.main(config_path="../conf", config_name="probe", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)["top1"]


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "probe")
