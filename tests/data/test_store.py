"""The on-disk skeleton store: round trip, atomic writes, integrity checks, no pickle."""

import json
import pickle

import numpy as np
import pytest

from last_lite.data.store import SkeletonStore, StoreError, StoreWriter


def _samples(rng, n=7, v=25, c=3):
    return [rng.normal(size=(int(rng.integers(1, 4)), int(rng.integers(1, 30)), v, c)).astype(np.float32)
            for _ in range(n)]


def _write(path, samples, **kw):
    with StoreWriter(path, "ntu25", 3, class_names=["a", "b", "c"], source="unit", **kw) as w:
        for i, x in enumerate(samples):
            w.add(f"s{i:03d}", x, i % 3, subject=i // 2, camera=1 + i % 2)
        w.set_split("xsub", "train", [0, 1, 2, 3])
        w.set_split("xsub", "test", [4, 5, 6])
    return w


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    samples = _samples(rng)
    w = _write(tmp_path / "store", samples)
    assert w.path == tmp_path / "store"
    st = SkeletonStore(tmp_path / "store")
    assert len(st) == len(samples)
    for i, x in enumerate(samples):
        got = st.get(i)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got, x)
    got = st.get(2)
    got[...] = 0  # a copy, not a view into the memmap
    np.testing.assert_array_equal(st.get(2), samples[2])
    assert st.names == [f"s{i:03d}" for i in range(len(samples))]
    np.testing.assert_array_equal(st.labels, np.arange(len(samples)) % 3)
    np.testing.assert_array_equal(st.field("subject"), np.arange(len(samples)) // 2)
    np.testing.assert_array_equal(st.split("xsub", "test"), [4, 5, 6])
    assert st.layout == "ntu25" and st.channels == 3 and st.num_joints == 25
    assert st.class_names == ["a", "b", "c"] and st.num_classes == 3
    assert st.source == "unit" and len(st.index_checksum) == 64
    np.testing.assert_array_equal(st.persons, [x.shape[0] for x in samples])
    np.testing.assert_array_equal(st.lengths, [x.shape[1] for x in samples])
    frames = np.load(tmp_path / "store" / "frames.npy", allow_pickle=False)
    assert frames.shape == (sum(x.shape[0] * x.shape[1] for x in samples), 25, 3)
    with pytest.raises(KeyError, match="no field"):
        st.field("nope")
    with pytest.raises(KeyError, match="no split"):
        st.split("xview", "train")
    with pytest.raises(IndexError):
        st.get(len(samples))


def test_checksum_depends_on_index_only(tmp_path):
    rng = np.random.default_rng(1)
    samples = _samples(rng)
    _write(tmp_path / "a", samples)
    _write(tmp_path / "b", [x + 1 for x in samples])  # same index, other values
    assert SkeletonStore(tmp_path / "a").index_checksum == SkeletonStore(tmp_path / "b").index_checksum
    longer = [np.concatenate([samples[0], samples[0]], axis=1)] + samples[1:]
    _write(tmp_path / "c", longer)
    assert SkeletonStore(tmp_path / "c").index_checksum != SkeletonStore(tmp_path / "a").index_checksum


def test_exception_leaves_nothing(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(tmp_path / "store", "ntu25", 3) as w:
            w.add("x", rng.normal(size=(1, 5, 25, 3)), 0)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_store_atomically(tmp_path):
    rng = np.random.default_rng(3)
    _write(tmp_path / "store", _samples(rng, n=7))
    new = _samples(rng, n=7)
    with pytest.raises(ValueError):  # a failed rebuild keeps the old store
        with StoreWriter(tmp_path / "store", "ntu25", 3) as w:
            w.add("x", new[0], 0)
            w.add("bad", np.zeros((1, 5, 20, 3)), 0)
    assert len(SkeletonStore(tmp_path / "store")) == 7
    _write(tmp_path / "store", new)
    np.testing.assert_array_equal(SkeletonStore(tmp_path / "store").get(6), new[6])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_validation_errors(tmp_path):
    with StoreWriter(tmp_path / "s", "ucla20", 3) as w:
        w.add("a", np.ones((1, 4, 20, 3)), 0)
        with pytest.raises(ValueError, match="duplicate"):
            w.add("a", np.ones((1, 4, 20, 3)), 0)
        with pytest.raises(ValueError, match="V=20"):
            w.add("b", np.ones((1, 4, 25, 3)), 0)
        with pytest.raises(ValueError, match="M, T, V, C"):
            w.add("c", np.ones((4, 20, 3)), 0)
        with pytest.raises(ValueError, match="out of range"):
            w.set_split("x", "train", [5])
    st = SkeletonStore(tmp_path / "s")
    assert len(st) == 1 and st.class_names == ["0"]


def test_missing_and_corrupt_stores_name_the_path(tmp_path):
    with pytest.raises(StoreError, match=str(tmp_path / "none")):
        SkeletonStore(tmp_path / "none")
    rng = np.random.default_rng(4)
    _write(tmp_path / "s", _samples(rng))
    np.save(tmp_path / "s" / "labels.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(StoreError, match="checksum"):
        SkeletonStore(tmp_path / "s")
    _write(tmp_path / "t", _samples(rng))
    (tmp_path / "t" / "frames.npy").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="frames.npy"):
        SkeletonStore(tmp_path / "t")


def test_nonfinite_recorded_and_no_pickle(tmp_path):
    bad = np.ones((1, 3, 25, 3), dtype=np.float32)
    bad[0, 1, 2, 0] = np.nan
    with StoreWriter(tmp_path / "s", "ntu25", 3) as w:
        w.add("good", np.ones((1, 3, 25, 3)), 0)
        w.add("bad", bad, 1)
    st = SkeletonStore(tmp_path / "s")
    assert st.nonfinite == [1]
    for f in (tmp_path / "s").glob("*.npy"):
        np.load(f, allow_pickle=False)  # would raise on object arrays
    json.loads((tmp_path / "s" / "meta.json").read_text())


def test_store_survives_pickling_for_workers(tmp_path):
    rng = np.random.default_rng(5)
    samples = _samples(rng)
    _write(tmp_path / "s", samples)
    st = SkeletonStore(tmp_path / "s")
    st.get(0)  # opens the memmap
    clone = pickle.loads(pickle.dumps(st))
    assert clone._frames is None
    np.testing.assert_array_equal(clone.get(3), samples[3])


def test_custom_layout_mapping(tmp_path):
    layout = {"edges": [[0, 1], [1, 2], [2, 3]], "center": 1}
    with StoreWriter(tmp_path / "s", layout, 2, coord_dims=2) as w:
        w.add("a", np.ones((1, 2, 4, 2)), -1)
    st = SkeletonStore(tmp_path / "s")
    assert st.layout == layout and st.coord_dims == 2 and st.num_classes == 0
    assert st.labels.tolist() == [-1]


def test_numpy_only_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, last_lite.data, last_lite.data.store, last_lite.data.normalize, "
            "last_lite.data.transforms, last_lite.data.sources, last_lite.data.sources.synthetic, "
            "last_lite.data.sources.nw_ucla, last_lite.data.sources.custom, "
            "last_lite.data.sources.ctrgcn, last_lite.data.sources.pyskl; "
            "print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_source_records_its_normalisation_and_export_reads_it(tmp_path):
    """The store says what its source applied (the runtime must repeat it); export takes that
    over guessing from the source's class, and an explicit override still wins."""
    from types import SimpleNamespace

    from last_lite.export.common import normalization_meta

    with StoreWriter(tmp_path / "s", "ucla20", 3, class_names=["a"], prenormalize="none") as w:
        w.add("x", np.ones((1, 4, 20, 3), np.float32), 0)
    store = SkeletonStore(tmp_path / "s")
    assert store.prenormalize == "none"
    cfg = {"source": {"_target_": "last_lite.data.sources.nw_ucla.NWUCLASource", "normalize": True}}
    dm = SimpleNamespace(store=store, coord_dims=3)
    assert normalization_meta(cfg, dm)["prenormalize"] == "none"
    assert normalization_meta(cfg, dm, override="3d")["prenormalize"] == "3d"
    old = SimpleNamespace(store=SimpleNamespace(prenormalize=None), coord_dims=3)  # written before
    assert normalization_meta(cfg, old)["prenormalize"] == "3d"
    with pytest.raises(ValueError, match="prenormalize"):
        StoreWriter(tmp_path / "t", "ucla20", 3, prenormalize="minmax")
