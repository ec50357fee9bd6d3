"""A timm-style model registry: ``create_model(name, num_classes=..., layout=..., **overrides)``."""

from __future__ import annotations

from importlib import import_module
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Modules whose import registers the built-in models.
_BUILTIN_MODULES = ("last_lite.models.last_e_v3", "last_lite.models.last_lite",
                    "last_lite.models.efficientgcn")


def register_model(name: str):
    """Decorator: register ``fn(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        import_module(module)


def list_models() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 60, layout="ntu25", **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace the variant's defaults (e.g. drop_path)."""
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    return factory(num_classes=num_classes, layout=layout, **overrides)
