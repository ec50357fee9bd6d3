"""Skeleton data: the on-disk store, normalisation, augmentation, sources and the DataModule.

Importing this package imports nothing heavy (no torch): ``store``, ``normalize`` and
``transforms`` are numpy-only (the edge runtime uses ``normalize``); ``datamodule`` needs torch and
Lightning and is imported on first use.
"""

from importlib import import_module

_LAZY = {
    "StoreWriter": "store", "SkeletonStore": "store", "StoreError": "store",
    "pre_normalize_3d": "normalize", "normalize_2d": "normalize", "normalize_clip": "normalize",
    "build_transform": "transforms", "Compose": "transforms",
    "SkeletonDataModule": "datamodule",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
