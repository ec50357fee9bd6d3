"""The Lightning DataModule: batch layout, validation hold-out, multi-clip, calibration, configs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import data_group
from last_lite.data.datamodule import SkeletonDataModule, stratified_holdout
from last_lite.data.normalize import normalize_clip
from last_lite.data.sources.synthetic import SyntheticSource
from last_lite.data.store import StoreWriter

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_classes=5, train_per_class=10, test_per_class=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    SyntheticSource(**SMALL).build(path)
    return path


def _dm(cache, **kw):
    args = dict(split="xsub", clip_len=32, batch_size=8, cache_dir=str(cache),
                train_transform={"rotate": 0.2, "min_crop_len": 0})
    args.update(kw)
    return SkeletonDataModule(SyntheticSource(**SMALL), **args)


def test_batches(cache):
    dm = _dm(cache)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 5 and dm.layout == "ntu25" and dm.in_channels == 3
    assert len(dm.class_names) == 5 and len(dm.index_checksum) == 64
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 25, 2) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (3, 32, 25, 2) and torch.isfinite(x).all()
    persons = dm.store.persons[dm.val_indices[:len(x)]]
    assert (persons == 1).all() and (x[..., 1] == 0).all()  # padded person slot
    assert (x[..., 0] != 0).any(dim=(1, 2, 3)).all()
    xt, yt = next(iter(dm.test_dataloader()))
    i = int(dm.test_indices[0])
    ref = normalize_clip(dm.store.get(i), "ntu25", 32, 2)
    np.testing.assert_allclose(xt[0].numpy(), ref.transpose(3, 1, 2, 0))  # the edge path
    assert int(yt[0]) == dm.store.labels[i]
    x1, _ = next(iter(_dm(cache, max_persons=1).test_dataloader()))
    assert x1.shape == (8, 3, 32, 25, 1)
    assert sum(len(b[1]) for b in dm.train_dataloader()) == 8 * (len(dm.train_indices) // 8)


def test_holdout_is_stratified_and_never_touches_test(cache):
    dm = _dm(cache, val_fraction=0.2, seed=3)
    dm.setup()
    train_split = set(dm.store.split("xsub", "train").tolist())
    test_split = set(dm.store.split("xsub", "test").tolist())
    tr, va, te = (set(a.tolist()) for a in (dm.train_indices, dm.val_indices, dm.test_indices))
    assert not tr & va and tr | va == train_split and va <= train_split
    assert not va & test_split and te == test_split
    assert np.bincount(dm.store.labels[dm.val_indices]).tolist() == [2] * 5
    assert not dm.val_is_test
    again = _dm(cache, val_fraction=0.2, seed=3)
    again.setup()
    np.testing.assert_array_equal(again.val_indices, dm.val_indices)
    other = _dm(cache, val_fraction=0.2, seed=4)
    other.setup()
    assert not np.array_equal(other.val_indices, dm.val_indices)
    dm_t = _dm(cache, val_split="test")
    dm_t.setup()
    assert dm_t.val_is_test and set(dm_t.val_indices.tolist()) == test_split
    assert set(dm_t.train_indices.tolist()) == train_split


def test_stratified_holdout_edge_cases():
    labels = np.array([0, 0, 0, 1, 2, 2])
    keep, val = stratified_holdout(labels, np.arange(6), 0.34, 0)
    assert set(labels[val]) == {0, 2} and len(val) == 2  # a singleton class stays in training
    keep, val = stratified_holdout(labels, np.arange(6), 0.0, 0)
    assert len(val) == 0 and len(keep) == 6


def test_multi_clip_calibration_and_unlabelled(cache):
    dm = _dm(cache, test_clips=3, train_transform={"test_crop_ratio": 0.7})
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 3, 3, 32, 25, 2) and y.shape == (8,)
    assert not torch.equal(x[:, 0], x[:, 2])
    cal = list(dm.calibration_dataloader(num_samples=12, seed=1))
    assert sum(len(b[0]) for b in cal) == 12 and cal[0][0].shape[1:] == (3, 32, 25, 2)
    cal2 = list(dm.calibration_dataloader(num_samples=12, seed=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cal, cal2))
    ids = dm._dataset(dm.train_indices, False).indices
    assert len(ids) == len(dm.train_indices)
    un = _dm(cache, unlabelled=True)
    batch = next(iter(un.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (8, 3, 32, 25, 2)


def test_train_augmentation_reproducible_and_workers(cache):
    dm = _dm(cache)
    torch.manual_seed(0)
    a = next(iter(dm.train_dataloader()))[0]
    torch.manual_seed(0)
    b = next(iter(dm.train_dataloader()))[0]
    torch.manual_seed(1)
    c = next(iter(dm.train_dataloader()))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    dmw = _dm(cache, num_workers=1)
    loader = dmw.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    it = iter(loader)
    xs = torch.cat([x for x, _ in it])
    it._shutdown_workers()  # now, rather than at a later garbage collection (a 5 s join timeout)
    ref = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(xs, ref)  # workers open their own memmap and see the same data
    assert not dm.val_dataloader().persistent_workers


def _nan_store(path):
    rng = np.random.default_rng(0)
    with StoreWriter(path, "ntu25", 3, class_names=["a", "b"]) as w:
        for i in range(12):
            x = rng.normal(size=(1, 20, 25, 3))
            if i == 3:
                x[0, 5, 5, 1] = np.inf
            w.add(f"n{i}", x, i % 2)
        w.set_split("s", "train", range(8))
        w.set_split("s", "test", range(8, 12))
    return path


def test_bad_values_dropped_or_rejected(tmp_path):
    path = _nan_store(tmp_path / "nan")
    dm = SkeletonDataModule(str(path), "s", clip_len=16, batch_size=4, val_fraction=0.25)
    with pytest.warns(UserWarning, match="n3"):
        dm.setup()
    assert 3 not in dm.train_indices and 3 not in dm.val_indices
    assert len(dm.train_indices) + len(dm.val_indices) == 7
    with pytest.raises(ValueError, match="n3"):
        SkeletonDataModule(str(path), "s", on_bad_values="error").setup()


def test_hydra_config(tmp_path, cache):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"paths": {"cache_dir": str(cache), "data_dir": str(tmp_path)},
                            "data": data_group("synthetic")})
    cfg.data.source.update(SMALL)
    cfg.data.clip_len = 16
    dm = instantiate(cfg.data)
    assert isinstance(dm, SkeletonDataModule) and dm.num_classes == 5
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 16, 25, 2)
    for name in ("nw_ucla", "ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset", "custom"):
        c = OmegaConf.create({"paths": {"cache_dir": "c", "data_dir": "d"},
                              "data": data_group(name)})
        assert c.data._target_.endswith("SkeletonDataModule")
        OmegaConf.resolve(c)
        if name.startswith("ntu"):
            assert c.data.split == c.data.source.benchmark
            assert c.data.source._target_ == "last_lite.data.sources.ntu.NTUSource"


def test_bad_arguments(cache):
    with pytest.raises(ValueError, match="val_split"):
        _dm(cache, val_split="nope")
    with pytest.raises(ValueError, match="unlabelled"):
        _dm(cache, extra_sources=["x"])
    with pytest.raises(TypeError):
        SkeletonDataModule(42, "xsub").setup()
