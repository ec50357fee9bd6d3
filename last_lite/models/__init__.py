"""Networks of the LAST family, the EfficientGCN-B0 baseline and their registry.

``graph`` is numpy-only (skeleton layouts themselves live in :mod:`last_lite.skeleton`);
everything else needs torch and is imported on first use, so ``import last_lite.models.graph``
never pulls torch in.
"""

from importlib import import_module

_LAZY = {"create_model": "registry", "list_models": "registry", "register_model": "registry",
         "profile_model": "profile"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
