"""Importers: a custom .npy folder, PYSKL pickles (trusted only) and CTR-GCN npz files."""

import csv
import os
import pickle

import numpy as np
import pytest

from last_lite.data.datamodule import SkeletonDataModule
from last_lite.data.normalize import normalize_2d, pre_normalize_3d
from last_lite.data.sources import get_source
from last_lite.data.sources.ctrgcn import CTRGCNSource, iter_npz_rows, row_to_sample
from last_lite.data.sources.custom import CustomSource
from last_lite.data.sources.nw_ucla import NWUCLASource
from last_lite.data.sources.pyskl import PYSKLSource, UntrustedPickleError, split_part


# ---- custom folder --------------------------------------------------------------------------------
def _custom_folder(root, v=17, c=3, layout_2d=True, n=12):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        t = int(rng.integers(10, 30))
        xy = rng.uniform(50, 400, size=(t, v, 2))
        arr = np.concatenate([xy, rng.uniform(0.1, 1, size=(t, v, 1))], -1) if c == 3 else xy
        if i % 4 == 0:
            arr = arr[None]  # an (M, T, V, C) file
        (root / "clips").mkdir(exist_ok=True)
        np.save(root / "clips" / f"c{i}.npy", arr.astype(np.float32))
        rows.append({"name": f"clips/c{i}" + (".npy" if i % 2 else ""),
                     "label": ["wave", "jump", "sit"][i % 3],
                     "split": "test" if i >= 9 else ("val" if i == 8 else "train")})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return rows


def test_custom_2d_with_score(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _custom_folder(data)
    src = CustomSource(data, layout="coco17", coord_dims=2)
    store = src.build(tmp_path / "cache")
    assert len(store) == 12 and store.channels == 3 and store.coord_dims == 2
    assert store.class_names == ["jump", "sit", "wave"]
    assert store.labels.tolist()[:3] == [2, 0, 1]
    assert store.split("custom", "test").tolist() == [9, 10, 11]
    assert store.split("custom", "val").tolist() == [8]
    raw = np.load(data / "clips" / "c1.npy", allow_pickle=False)[None]
    np.testing.assert_allclose(store.get(1), normalize_2d(raw, "coco17", 2), atol=1e-6)
    assert src.build(tmp_path / "cache").root == store.root  # cached
    dm = SkeletonDataModule(src, "custom", clip_len=16, batch_size=4, val_split="split",
                            cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert dm.val_indices.tolist() == [8] and 8 not in dm.train_indices
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 17, 2)


def test_custom_layout_edges_and_errors(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _custom_folder(data, v=5, c=2)
    layout = {"edges": [[0, 1], [1, 2], [2, 3], [3, 4]]}
    store = CustomSource(data, layout=layout).build(tmp_path / "cache")
    assert store.layout["edges"] == layout["edges"] and store.channels == 2
    with pytest.raises(ValueError, match="expected"):
        CustomSource(data, layout="coco17").build(tmp_path / "cache2")
    assert not (tmp_path / "cache2").exists() or not any((tmp_path / "cache2").iterdir())
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        CustomSource(tmp_path, layout=layout).build(tmp_path / "cache")


# ---- PYSKL ------------------------------------------------------------------------------------------
def _pyskl_file(path, two_d=False):
    rng = np.random.default_rng(1)
    anns = []
    for i in range(6):
        t = 15 + i
        if two_d:
            ann = {"keypoint": rng.uniform(0, 300, size=(1, t, 17, 2)).astype(np.float32),
                   "keypoint_score": rng.uniform(size=(1, t, 17)).astype(np.float32)}
        else:
            ann = {"keypoint": rng.normal(size=(2 if i % 2 else 1, t, 25, 3)).astype(np.float32)}
        ann.update(frame_dir=f"S001C001P00{i}R001A00{i % 3 + 1}", label=i % 3, total_frames=t)
        anns.append(ann)
    names = [a["frame_dir"] for a in anns]
    data = {"split": {"xsub_train": names[:4], "xsub_val": names[4:], "other": names[:1]},
            "annotations": anns}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return data


def test_pyskl_refuses_without_trust(tmp_path):
    path = tmp_path / "ntu.pkl"
    _pyskl_file(path)
    with pytest.raises(UntrustedPickleError, match="trusted=True"):
        PYSKLSource(path)
    with pytest.raises(PermissionError, match="arbitrary code"):
        get_source("pyskl", path=path, trusted=False)
    assert not (tmp_path / "cache").exists()


def test_pyskl_trusted_3d_and_2d(tmp_path):
    path = tmp_path / "ntu.pkl"
    data = _pyskl_file(path)
    store = PYSKLSource(path, trusted=True).build(tmp_path / "cache")
    assert len(store) == 6 and store.layout == "ntu25" and store.num_classes == 3
    assert store.split("xsub", "train").tolist() == [0, 1, 2, 3]
    assert store.split("xsub", "test").tolist() == [4, 5]
    assert store.split("other", "all").tolist() == [0]
    np.testing.assert_allclose(store.get(1), pre_normalize_3d(data["annotations"][1]["keypoint"], "ntu25"),
                               atol=1e-6)
    assert store.get(1).shape[0] == 2
    path2 = tmp_path / "hrnet.pkl"
    data2 = _pyskl_file(path2, two_d=True)
    s2 = PYSKLSource(path2, trusted=True).build(tmp_path / "cache")
    assert s2.layout == "coco17" and s2.channels == 3 and s2.coord_dims == 2
    np.testing.assert_allclose(s2.get(0)[..., 2], data2["annotations"][0]["keypoint_score"], atol=1e-6)
    assert split_part("xview_val") == ("xview", "test") and split_part("train") == ("train", "all")


# ---- CTR-GCN npz ----------------------------------------------------------------------------------
def _ctrgcn_npz(path, n_train=7, n_test=3, t=40, classes=6):
    rng = np.random.default_rng(2)
    out, lengths = {}, {}
    for part, n in (("train", n_train), ("test", n_test)):
        x = np.zeros((n, t, 150), dtype=np.float32)
        lens = rng.integers(5, t, size=n)
        for i, length in enumerate(lens):
            x[i, :length, :75] = rng.normal(size=(length, 75))
            if i % 2:
                x[i, :length, 75:] = rng.normal(size=(length, 75))
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, size=n)]
        out[f"x_{part}"], out[f"y_{part}"] = x, y
        lengths[part] = lens
    np.savez(path, **out)
    return out, lengths


def test_ctrgcn_npz(tmp_path):
    path = tmp_path / "NTU60_CS.npz"
    arrays, lengths = _ctrgcn_npz(path)
    blocks = list(iter_npz_rows(path, "x_train", chunk=3))
    assert [len(b) for b in blocks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), arrays["x_train"])
    store = CTRGCNSource(path, benchmark="xsub", chunk=3).build(tmp_path / "cache")
    assert len(store) == 10 and store.num_classes == 6 and store.layout == "ntu25"
    assert store.split("xsub", "train").tolist() == list(range(7))
    assert store.split("xsub", "test").tolist() == [7, 8, 9]
    np.testing.assert_array_equal(store.lengths[:7], lengths["train"])
    np.testing.assert_array_equal(store.persons[:7], [1, 2, 1, 2, 1, 2, 1])
    np.testing.assert_array_equal(store.labels[7:], arrays["y_test"].argmax(1))
    x = store.get(1)
    ref = arrays["x_train"][1, :lengths["train"][1]].reshape(-1, 2, 25, 3).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(x, ref)
    assert row_to_sample(np.zeros((5, 150), np.float32)).shape == (1, 1, 25, 3)


def test_ctrgcn_refuses_object_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros((1, 2)),
             x_test=np.zeros((1, 2, 150)), y_test=np.zeros((1, 2)))
    with pytest.raises(ValueError):
        CTRGCNSource(path).build(tmp_path / "cache")


@pytest.mark.parametrize("bad_row", [np.zeros(6), np.eye(6)[1] + np.eye(6)[4], np.eye(6)[2] * 0.9])
def test_ctrgcn_refuses_label_rows_that_are_not_one_hot(tmp_path, bad_row):
    path = tmp_path / "NTU60_CS.npz"
    arrays, _ = _ctrgcn_npz(path)
    arrays["y_train"][4] = bad_row  # argmax would read it as a class
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"NTU60_CS.npz: y_train rows \[4\] are not one-hot"):
        CTRGCNSource(path, chunk=3).build(tmp_path / "cache")  # row 4 is in the second block


# ---- every source's cache key ----------------------------------------------------------------------
def _key_inputs(kind, root):
    """(the source, the one data file its key must follow)."""
    if kind == "custom":
        _custom_folder(root, n=4)
        return CustomSource(root, layout="coco17"), root / "clips" / "c1.npy"
    if kind == "ctrgcn":
        _ctrgcn_npz(root / "NTU60_CS.npz")
        return CTRGCNSource(root / "NTU60_CS.npz"), root / "NTU60_CS.npz"
    (root / "a01_s01_e01_v01.json").write_text('{"label": 1, "skeletons": [[[0, 0, 0]]]}')
    return NWUCLASource(root), root / "a01_s01_e01_v01.json"


@pytest.mark.parametrize("kind", ["custom", "ctrgcn", "nw_ucla"])
def test_the_cache_key_sees_a_same_size_rewrite_within_one_second(tmp_path, kind):
    source, path = _key_inputs(kind, tmp_path)
    second = 1_700_000_000 * 10**9
    os.utime(path, ns=(second + 1000, second + 1000))
    before = source.key()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, other content
    path.write_bytes(bytes(data))
    os.utime(path, ns=(second + 2000, second + 2000))  # the same whole second
    assert source.key() != before
