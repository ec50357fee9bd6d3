"""The Lightning DataModule: a source's store -> train/val/test/calibration loaders.

Batches are torch float32 ``(N, C, T, V, M)`` (``M`` = ``max_persons``, padded with zeros) and int64
labels; with ``test_clips = k > 1`` the test loader yields ``(N, k, C, T, V, M)`` (k temporal clips
to average); with ``unlabelled=True`` every loader yields clips only.

Validation: ``val_split="holdout"`` holds a stratified (per class), seeded ``val_fraction`` of the
TRAIN split out of training and never touches the test part; ``val_split="test"`` validates on the
test part (the field's optimistic practice; ``val_is_test`` is then True); ``val_split="split"``
uses the split's own ``val`` part.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from last_lite.data.normalize import normalize_clip
from last_lite.data.store import SkeletonStore
from last_lite.data.transforms import build_transform

def resolve_store(source: Any, cache_dir: str | os.PathLike) -> SkeletonStore:
    """A store from a source object (``build(cache_dir)``), a store, or a store directory."""
    if isinstance(source, SkeletonStore):
        return source
    if hasattr(source, "build"):
        return source.build(cache_dir)
    if isinstance(source, (str, os.PathLike)):
        return SkeletonStore(source)
    raise TypeError(f"source must be a source object with build(cache_dir), a SkeletonStore or a "
                    f"store directory, got {type(source).__name__}")


class SkeletonDataset(Dataset):
    """Samples ``indices`` of a store, as (C, T, V, M) float32 tensors (and int64 labels).

    ``train=True`` draws a fresh augmentation per item from torch's RNG (so it is reproducible
    under ``seed_everything`` and differs across epochs and workers); otherwise the deterministic
    :func:`~last_lite.data.normalize.normalize_clip` path is used, ``num_clips`` clips per item.
    """

    def __init__(self, store: SkeletonStore, indices: Sequence[int], clip_len: int,
                 max_persons: int = 2, train: bool = False,
                 transform: Mapping[str, Any] | None = None, labelled: bool = True,
                 num_clips: int = 1) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.clip_len, self.max_persons = int(clip_len), int(max_persons)
        self.train, self.labelled, self.num_clips = bool(train), bool(labelled), int(num_clips)
        kw = dict(transform or {})
        self.temporal = kw.get("temporal", "resize")
        self.test_crop_ratio = float(kw.get("test_crop_ratio", 0.95))
        self.spatial_norm = kw.get("spatial_norm")
        self.transform = build_transform(clip_len=self.clip_len, train=True,
                                         max_persons=self.max_persons,
                                         coord_dims=store.coord_dims, **kw) if train else None

    def __len__(self) -> int:
        return len(self.indices)

    def clip(self, x: np.ndarray, clip_index: int = 0, num_clips: int = 1) -> np.ndarray:
        return normalize_clip(x, None, self.clip_len, self.max_persons, mode=self.temporal,
                              crop_ratio=self.test_crop_ratio, num_clips=num_clips,
                              clip_index=clip_index, coord_dims=self.store.coord_dims,
                              spatial_norm=self.spatial_norm)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        x = self.store.get(i)
        if self.train:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            out = torch.from_numpy(np.ascontiguousarray(self.transform(x, rng).transpose(3, 1, 2, 0)))
        elif self.num_clips > 1:
            clips = [self.clip(x, j, self.num_clips) for j in range(self.num_clips)]
            out = torch.from_numpy(np.ascontiguousarray(np.stack(clips).transpose(0, 4, 2, 3, 1)))
        else:
            out = torch.from_numpy(np.ascontiguousarray(self.clip(x).transpose(3, 1, 2, 0)))
        if not self.labelled:
            return out
        return out, torch.tensor(int(self.store.labels[i]), dtype=torch.int64)


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, a sampler that gives each rank a disjoint share and every sample exactly once.

    Lightning would otherwise put a ``DistributedSampler`` on evaluation loaders, which pads the
    last batch with repeated samples so that the synchronised metrics count them twice. With this
    sampler the ranks' batch counts may differ by one, which is safe for evaluation (DDP syncs
    buffers only on the first forward without gradients) as long as every rank gets a sample.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if len(dataset) < dist.get_world_size():
        return None  # some rank would get nothing; Lightning's padded sampler it is
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)`` alone: a run resumed at an epoch boundary sees
    the same order as an uninterrupted one (Lightning calls ``set_epoch`` every epoch). With
    ``repeat = r`` an epoch visits every sample ``r`` times (CTR-GCN's NW-UCLA loader repeats its
    training list 5 times), in one shuffled order."""

    def __init__(self, num_samples: int, seed: int = 0, repeat: int = 1) -> None:
        if int(repeat) < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.num_samples, self.seed, self.epoch = int(num_samples), int(seed), 0
        self.repeat = int(repeat)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples * self.repeat

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self), generator=generator)
        return iter((order % max(self.num_samples, 1)).tolist())


def stratified_holdout(labels: np.ndarray, indices: np.ndarray, fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (keep, held out): ``round(fraction * n_c)`` per class (at least one
    where a class has two or more samples and ``fraction > 0``), chosen with ``seed``."""
    indices = np.asarray(indices, dtype=np.int64)
    if fraction <= 0 or len(indices) == 0:
        return np.sort(indices), np.zeros(0, dtype=np.int64)
    if fraction >= 1:
        raise ValueError(f"val_fraction must be < 1, got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    lab = labels[indices]
    for c in np.unique(lab):
        members = indices[lab == c]
        n = int(round(fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        held.append(rng.permutation(members)[:n])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(indices, val)
    return keep, val


class SkeletonDataModule(L.LightningDataModule):
    """Loaders over one source's split; see the module docstring.

    ``source``: a source object (``build(cache_dir) -> SkeletonStore``), a store or a store path.
    ``split``: the store's split name (``xsub``, ``xview``, ...). ``train_transform``: kwargs of
    :func:`~last_lite.data.transforms.build_transform` (``temporal`` and ``test_crop_ratio`` also
    set the test-time clip). ``repeat``: training passes over the data per epoch. ``extra_sources``: more stores whose samples all join the training
    set (only with ``unlabelled=True``). ``on_bad_values``: ``drop`` (with a warning naming the
    samples) or ``error`` for samples holding NaN/inf.
    """

    def __init__(self, source: Any, split: str, clip_len: int = 64, batch_size: int = 16,
                 num_workers: int = 0, max_persons: int | None = 2, val_fraction: float = 0.1,
                 val_split: str = "holdout", seed: int = 0,
                 train_transform: Mapping[str, Any] | None = None, unlabelled: bool = False,
                 extra_sources: Sequence[Any] | None = None, cache_dir: str = "outputs/cache",
                 test_clips: int = 1, on_bad_values: str = "drop", pin_memory: bool = False,
                 eval_batch_size: int | None = None, repeat: int = 1) -> None:
        super().__init__()
        if val_split not in ("holdout", "test", "split"):
            raise ValueError(f"val_split must be 'holdout', 'test' or 'split', got {val_split!r}")
        if on_bad_values not in ("drop", "error"):
            raise ValueError(f"on_bad_values must be 'drop' or 'error', got {on_bad_values!r}")
        if extra_sources and not unlabelled:
            raise ValueError("extra_sources are only used for unlabelled pretraining "
                             "(set unlabelled=True)")
        self.source = source
        self.extra_sources = list(extra_sources or [])
        self.split = split
        self.clip_len, self.batch_size = int(clip_len), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        # None: the most persons any sample of the store holds (read from the data)
        self._max_persons = None if max_persons is None else int(max_persons)
        self.val_fraction, self.val_split, self.seed = float(val_fraction), val_split, int(seed)
        self.train_transform = dict(train_transform or {})
        self.unlabelled = bool(unlabelled)
        self.cache_dir = str(cache_dir)
        self.test_clips = int(test_clips)
        self.on_bad_values = on_bad_values
        self.pin_memory = bool(pin_memory)
        if int(repeat) < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)
        self.save_hyperparameters(ignore=["source", "extra_sources"])
        self._store: SkeletonStore | None = None
        self._extra: list[SkeletonStore] | None = None
        self.train_indices = self.val_indices = self.test_indices = None

    # -- store ----------------------------------------------------------------------------------
    @property
    def max_persons(self) -> int:
        if self._max_persons is None:
            self._max_persons = max(1, int(self.store.persons.max()) if len(self.store) else 1)
        return self._max_persons

    @property
    def store(self) -> SkeletonStore:
        if self._store is None:
            self._store = resolve_store(self.source, self.cache_dir)
        return self._store

    @property
    def extra_stores(self) -> list[SkeletonStore]:
        if self._extra is None:
            self._extra = [resolve_store(s, self.cache_dir) for s in self.extra_sources]
            for s in self._extra:
                if (s.num_joints, s.channels) != (self.store.num_joints, self.store.channels):
                    raise ValueError(f"extra source {s.root} has V={s.num_joints}, C={s.channels}; "
                                     f"the main source has V={self.store.num_joints}, "
                                     f"C={self.store.channels}")
        return self._extra

    def prepare_data(self) -> None:
        resolve_store(self.source, self.cache_dir)
        for s in self.extra_sources:
            resolve_store(s, self.cache_dir)

    def _bad(self, store: SkeletonStore) -> set[int]:
        bad = store.nonfinite
        if not bad:
            return set()
        names = [store.names[i] for i in bad]
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        if self.on_bad_values == "error":
            raise ValueError(f"{len(bad)} samples of {store.root} hold NaN/inf values: {shown}")
        warnings.warn(f"dropping {len(bad)} samples of {store.root} holding NaN/inf values: {shown}",
                      stacklevel=2)
        return set(bad)

    def _part(self, part: str) -> np.ndarray:
        idx = self.store.split(self.split, part)
        bad = self._bad_main
        return np.asarray([i for i in idx if i not in bad], dtype=np.int64) if bad else idx

    def _refuse_unlabelled(self, parts: dict[str, np.ndarray]) -> None:
        """A label of -1 in any part would crash the loss (or the test after training)."""
        labels = self.store.labels
        found = {part: idx[labels[idx] < 0] for part, idx in parts.items() if len(idx)}
        found = {part: idx for part, idx in found.items() if len(idx)}
        if not found:
            return
        bad = np.unique(np.concatenate(list(found.values())))
        shown = ", ".join(self.store.names[i] for i in bad[:10])
        shown += f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"split {self.split!r} of {self.store.root} has unlabelled samples (empty "
                         f"or -1 label) in {' and '.join(found)}: {shown}. Unlabelled rows are only "
                         f"for pretraining (data.unlabelled=true, as python -m last_lite.pretrain "
                         f"sets); give them a label or leave them out")

    def setup(self, stage: str | None = None) -> None:
        if self.train_indices is not None:
            return
        store = self.store
        self._bad_main = self._bad(store)
        train = self._part("train")
        parts = store.splits.get(self.split, {})
        test = self._part("test") if "test" in parts else np.zeros(0, dtype=np.int64)
        if self.val_split == "holdout":
            train, val = stratified_holdout(store.labels, train, self.val_fraction, self.seed)
        elif self.val_split == "test":
            val = test
        else:
            if "val" not in parts:
                raise ValueError(f"val_split='split' but split {self.split!r} of {store.root} has "
                                 f"no 'val' part (parts: {sorted(parts)})")
            val = self._part("val")
        if not self.unlabelled:
            self._refuse_unlabelled({"train": train, "val": val, "test": test})
        self.train_indices, self.val_indices, self.test_indices = train, val, test

    @property
    def val_is_test(self) -> bool:
        return self.val_split == "test"

    # -- datasets and loaders ---------------------------------------------------------------------
    def _dataset(self, indices, train: bool, num_clips: int = 1) -> SkeletonDataset:
        return SkeletonDataset(self.store, indices, self.clip_len, self.max_persons, train=train,
                               transform=self.train_transform, labelled=not self.unlabelled,
                               num_clips=num_clips)

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int,
                drop_last: bool = False) -> DataLoader:
        sampler = (EpochShuffleSampler(len(dataset), self.seed, self.repeat) if shuffle
                   else eval_sampler(dataset))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataset(self) -> Dataset:
        self.setup()
        ds: Dataset = self._dataset(self.train_indices, train=True)
        if self.unlabelled and self.extra_sources:
            extra = []
            for s in self.extra_stores:
                bad = self._bad(s)
                idx = [i for i in range(len(s)) if i not in bad]
                extra.append(SkeletonDataset(s, idx, self.clip_len, self.max_persons, train=True,
                                             transform=self.train_transform, labelled=False))
            ds = ConcatDataset([ds, *extra])
        return ds

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        return self._loader(ds, shuffle=True, batch_size=self.batch_size,
                            drop_last=len(ds) > self.batch_size)

    def val_dataloader(self):
        self.setup()
        if len(self.val_indices) == 0:
            return []
        return self._loader(self._dataset(self.val_indices, train=False), False,
                            self.eval_batch_size)

    def test_dataloader(self):
        self.setup()
        if len(self.test_indices) == 0:
            return []
        return self._loader(self._dataset(self.test_indices, train=False, num_clips=self.test_clips),
                            False, self.eval_batch_size)

    def calibration_dataloader(self, num_samples: int = 256, seed: int = 0) -> DataLoader:
        """``num_samples`` training samples (drawn with ``seed``) through the test-time clip,
        e.g. for INT8 calibration; unshuffled, ``num_workers=0``."""
        self.setup()
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.permutation(self.train_indices)[:int(num_samples)])
        ds = self._dataset(idx, train=False)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, num_workers=0)

    # -- facts the model and the export need --------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.store.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.store.class_names

    @property
    def layout(self) -> str | dict:
        return self.store.layout

    @property
    def in_channels(self) -> int:
        return self.store.channels

    @property
    def coord_dims(self) -> int:
        return self.store.coord_dims

    @property
    def num_joints(self) -> int:
        return self.store.num_joints

    @property
    def index_checksum(self) -> str:
        return self.store.index_checksum

    def describe(self) -> dict[str, Any]:
        """Sizes and identity of the data, for logs and model cards."""
        self.setup()
        return {"store": str(self.store.root), "source": self.store.source, "split": self.split,
                "layout": self.layout, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "train": int(len(self.train_indices)),
                "val": int(len(self.val_indices)), "test": int(len(self.test_indices)),
                "val_is_test": self.val_is_test, "clip_len": self.clip_len,
                "max_persons": self.max_persons, "index_checksum": self.index_checksum}
