"""NaN or inf joints are caught when the data is loaded -- reported, and the sample dropped or the
run stopped (``data.on_bad_values``) -- never silently trained on. Through the DataModule, as the
Hydra config builds it, on a custom-data folder holding bad samples."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import data_group

BAD = {"clips/nan_train": np.nan, "clips/inf_test": np.inf}


def _custom_folder(root):
    """24 samples of 3 classes (2D + score, coco17); one training sample holds a NaN and one test
    sample an inf, in a single joint of a single frame."""
    rng = np.random.default_rng(0)
    (root / "clips").mkdir(parents=True)
    rows = []
    for i in range(24):
        name = f"clips/c{i}"
        split = "test" if i % 4 == 3 else "train"
        if i == 5:
            name, split = "clips/nan_train", "train"
        if i == 7:
            name, split = "clips/inf_test", "test"
        x = np.concatenate([rng.uniform(100, 400, size=(12, 17, 2)), np.ones((12, 17, 1))], -1)
        if name in BAD:
            x[6, 3, 0] = BAD[name]
        np.save(root / f"{name}.npy", x.astype(np.float32))
        rows.append({"name": name, "label": ["wave", "sit", "jump"][i % 3], "split": split})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)


def _datamodule(tmp_path, mode: str):
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
                            "data": data_group("custom")})
    cfg.data.update({"on_bad_values": mode, "clip_len": 8, "batch_size": 4, "val_fraction": 0.2})
    cfg.data.source.layout = "coco17"  # the folder has no layout.yaml
    return instantiate(cfg.data, _convert_="all")


def test_drop_reports_and_removes_the_bad_samples_from_every_split(tmp_path):
    _custom_folder(tmp_path / "custom")
    dm = _datamodule(tmp_path, "drop")
    with pytest.warns(UserWarning, match="dropping 2 samples .*NaN/inf.*clips/nan_train.*clips/inf_test"):
        dm.setup("fit")
    store = dm.store
    bad = {store.names.index(n) for n in BAD}
    assert set(store.nonfinite) == bad  # found when the store was built from the files
    kept = {int(i) for part in (dm.train_indices, dm.val_indices, dm.test_indices) for i in part}
    assert not kept & bad and len(kept) == 22
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning: nothing else is wrong
        batches = [*dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]
    assert sum(len(y) for _, y in batches) >= 20
    assert all(torch.isfinite(x).all() for x, _ in batches)  # nothing non-finite reaches a model


def test_error_stops_before_training_naming_the_samples(tmp_path):
    _custom_folder(tmp_path / "custom")
    dm = _datamodule(tmp_path, "error")
    with pytest.raises(ValueError, match="2 samples .* hold NaN/inf values: clips/nan_train, clips/inf_test"):
        dm.setup("fit")
    assert dm.train_indices is None  # nothing was set up, no loader can be built from it


def test_an_unknown_mode_is_refused(tmp_path):
    _custom_folder(tmp_path / "custom")
    with pytest.raises(Exception, match="on_bad_values must be 'drop' or 'error'"):  # via Hydra
        _datamodule(tmp_path, "ignore")
