"""A timm-style model registry: ``create_model(name, num_classes=..., layout=..., **overrides)``.

``build_model(spec)`` builds a network from a model spec: a ``conf/model`` config (``_target_``
plus its arguments, as saved in checkpoints as ``model_spec``) or, for checkpoints and zoo entries
written before the ``_target_`` was recorded, ``create_model``'s keyword arguments alone.

The contract every registered model keeps (tests/models/test_model_contract.py): ``forward(x)``
-> logits; ``forward_features(x)`` -> ``{"stages": [...], "pooled": (N, num_features)}``;
``forward_head(x, pre_logits=False)``; ``feature_info`` (one ``{"num_chs", "reduction",
"module"}`` per stage tap); ``num_classes``, ``num_features``, ``stage_channels``, ``layout``,
``in_channels`` and ``auxiliary_loss(pooled)`` (None when the model has none).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping

import torch
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


CREATE_MODEL = "last_lite.models.registry.create_model"


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The network a model spec names. Its ``_target_`` (default: :func:`create_model`) must be
    a callable inside ``last_lite.models``: a spec read from a checkpoint never names other code."""
    kwargs = dict(spec)
    target = str(kwargs.pop("_target_", CREATE_MODEL))
    if not target.startswith("last_lite.models."):
        raise ValueError(f"model _target_ {target!r} is outside last_lite.models")
    module_name, _, attr = target.rpartition(".")
    factory = getattr(import_module(module_name), attr, None)
    if not callable(factory):
        raise ValueError(f"model _target_ {target!r} is not a callable")
    # defined in last_lite.models, not merely reachable from it (e.g. an imported os.system)
    if not str(getattr(factory, "__module__", "")).startswith("last_lite.models."):
        raise ValueError(f"model _target_ {target!r} is not defined in last_lite.models")
    return factory(**kwargs)


def average_clips(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)``; a 6-D batch (N, k, C, T, V, M) holds k temporal crops of each sample, run
    as one batch of N*k clips whose outputs (logits or pooled features) are averaged per sample."""
    if x.dim() == 6:
        n, k = x.shape[:2]
        return forward(x.flatten(0, 1)).view(n, k, -1).mean(dim=1)
    return forward(x)
