"""Unique run folders (conf/hydra/default.yaml): two commands started in the same second never
share a folder.

Hydra names a run folder by the time to the second (``outputs/<date>/<HH-MM-SS>_<task>``), and two
runs started in the same second wrote into one folder (one record lost). :class:`UniqueRunFolder`
takes the folder with ``mkdir`` (atomic: exactly one process gets a name) before Hydra uses it, and
a run that finds the name taken gets ``<name>-2``, ``-3``, ... A multirun's sweep folder is taken
the same way (and handed to its jobs as a ``hydra.sweep.dir`` override). A folder given on the
command line (``hydra.run.dir=...``, how a run is resumed and how the pipeline places its stages)
is used as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

MAX_SUFFIX = 10_000


def reserve_folder(base: str | os.PathLike) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, ... whichever is free first."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_SUFFIX):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{base}: no free name up to -{MAX_SUFFIX - 1}")


def _given(config: DictConfig, key: str) -> bool:
    overrides = OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or []
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in overrides)


class UniqueRunFolder(Callback):
    """Listed last in conf/hydra/default.yaml: runs after the config and data checks (a refused
    command makes no folder)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _given(config, "hydra.run.dir"):
            return
        folder = reserve_folder(str(OmegaConf.select(config, "hydra.run.dir")))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _given(config, "hydra.sweep.dir"):
            return
        folder = reserve_folder(str(OmegaConf.select(config, "hydra.sweep.dir")))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(folder)
            # each job's config is composed again from the overrides: pass the folder on
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={folder}")
