"""What the commands print: only what helps (called once by the command modules).

Hidden: Lightning's advertisements ("Tip: ... litlogger / litmodels"), torch's ``_pytree``
``LeafSpec`` deprecation (raised inside Lightning, nothing a user can change) and, in Path B, the
"module(s) in eval mode" warning (the frozen teacher is in eval mode on purpose).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from hydra.experimental.callback import Callback

_ADVERTS = ("litlogger", "litmodels")


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not ("Tip:" in message and any(a in message for a in _ADVERTS))


def quiet() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def quiet_frozen_modules() -> None:
    """Path B: the teacher is frozen in eval mode on purpose."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class SweepFolder(Callback):
    """conf/hydra/default.yaml: a multirun ends by naming its folder (for ``last_lite.summarize``)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        print(f"multirun folder: {config.hydra.sweep.dir} "
              f"(one table: python -m last_lite.summarize {config.hydra.sweep.dir})")
