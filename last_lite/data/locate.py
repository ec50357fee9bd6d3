"""Is the data there? Checked before a command makes its run folder (a Hydra callback).

A missing data folder used to surface after the model was built, as a long traceback that left an
empty run folder behind; here the ``data.source`` path (``root`` or ``path``) of the composed
config is looked up first and a missing one stops the command with one message that names the
path, ``$LAST_LITE_DATA`` and the override that fixes it. Synthetic data has no path: nothing to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PATH_KEYS = ("root", "path")


def missing_data_message(path: str | os.PathLike, key: str) -> str:
    env = os.environ.get("LAST_LITE_DATA")
    where = (f"$LAST_LITE_DATA is {env}" if env else
             "$LAST_LITE_DATA is not set, so data folders are looked up under ./data")
    return (f"data not found: {path} ({where}). Set LAST_LITE_DATA=<the folder holding your data "
            f"folders>, or data.source.{key}=<the folder or file>.")


class DataNotFoundError(FileNotFoundError):
    """The data a command was asked to read is not there."""


def check_data_present(cfg: Any) -> None:
    """Raise :class:`DataNotFoundError` when ``data.source.root``/``path`` names nothing."""
    source = OmegaConf.select(cfg, "data.source", default=None) if isinstance(cfg, DictConfig) else None
    if not isinstance(source, DictConfig):
        return
    for key in PATH_KEYS:
        if key not in source or OmegaConf.is_missing(source, key):
            continue
        try:
            value = OmegaConf.select(source, key, throw_on_resolution_failure=True)
        except Exception:  # an interpolation that resolves only inside the job: checked there
            return
        if value and not Path(str(value)).exists():
            raise DataNotFoundError(missing_data_message(value, key))


def _check_with_hydra_config(config: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)  # ${hydra:...} resolves (run_job sets it again)
    try:
        check_data_present(config)
    except DataNotFoundError as exc:
        # Hydra turns a callback's exception into a warning and runs on: stop here, one line
        raise SystemExit(f"error: {exc}") from None


class DataCheck(Callback):
    """conf/hydra/default.yaml: runs before Hydra makes the run (or sweep) folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_with_hydra_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []
        if not any(str(o).lstrip("+~").startswith("data") for o in overrides):  # data not swept
            _check_with_hydra_config(config)
