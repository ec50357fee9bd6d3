"""Export backends: one small module each, behind one interface.

A backend is what ``conf/backend/<name>.yaml`` names (``_target_``, its options beside it). The
export run (``last_lite.export.__main__``) writes and checks the FP32 ONNX model for every
backend, then calls :meth:`Backend.build`, which writes the backend's own files into the
:class:`~last_lite.export.common.ExportContext` and registers what runs them; evaluation on the
test split, latency and the report are then the same for all.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


class Backend:
    """The FP32 ONNX model alone (``backend=onnx``); subclasses add their files in :meth:`build`."""

    name = "onnx"

    def __init__(self, name: str | None = None, **options: Any) -> None:
        if name is not None and name != self.name:
            raise ValueError(f"{type(self).__name__} is the {self.name!r} backend, not {name!r}")
        self.options = OmegaConf.create(options)

    def require(self) -> None:
        """Raise SystemExit (before anything is written) when the backend cannot run here."""

    def build(self, ctx) -> None:
        """Write this backend's files from ``ctx`` (the FP32 model is already there)."""


def backend_for(cfg: DictConfig) -> Backend:
    """The backend ``cfg.backend`` names (its ``_target_``, with the group's other keys as options)."""
    from hydra.utils import instantiate

    if "_target_" not in cfg.backend:
        raise ValueError("the export config names no backend (_target_); pick one with backend=<name>")
    return instantiate(cfg.backend, _convert_="all")
