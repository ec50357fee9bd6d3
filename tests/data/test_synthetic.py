"""The embedded synthetic data set: deterministic, balanced, subject-disjoint, realistic."""


import numpy as np
import pytest

from last_lite.data.sources.synthetic import (CLASS_NAMES, CONFUSABLE_PAIRS, TWO_PERSON,
                                              SyntheticSource, generate_sample)
from last_lite.models.graph import get_layout


@pytest.fixture(scope="module")
def default_store(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return SyntheticSource().build(cache), cache


def test_default_size_classes_and_split(default_store):
    store, _ = default_store
    assert store.layout == "ntu25" and store.channels == 3
    assert store.num_classes == len(CLASS_NAMES) >= 12
    train, test = store.split("xsub", "train"), store.split("xsub", "test")
    assert len(train) == 40 * 16 and len(test) == 15 * 16
    assert np.bincount(store.labels[train]).tolist() == [40] * 16
    assert np.bincount(store.labels[test]).tolist() == [15] * 16
    subj = store.field("subject")
    assert not set(subj[train]) & set(subj[test])  # cross-subject
    assert len(set(subj[train])) >= 8
    assert 40 <= store.lengths.min() and store.lengths.max() <= 120 and store.lengths.std() > 10
    two = np.isin(store.labels, sorted(TWO_PERSON))
    assert (store.persons[two] == 2).all() and (store.persons[~two] == 1).all()
    assert store.nonfinite == []
    assert len(np.unique(store.field("yaw"))) > 100  # viewpoints vary
    assert all(0 <= a < 16 and 0 <= b < 16 for a, b in CONFUSABLE_PAIRS)


def test_samples_are_plausible_and_normalised(default_store):
    store = default_store[0]
    lay = get_layout("ntu25")
    e = np.array(lay.edges)
    for i in (0, 100, 300, 600, len(store) - 1):
        x = store.get(i)
        np.testing.assert_allclose(x[0, 0, lay.norm_center], 0, atol=1e-6)
        sh = x[0, 0, 8] - x[0, 0, 4]
        assert sh[0] > 0.2 and np.allclose(sh[1:], 0, atol=1e-5)
        bones = np.linalg.norm(x[:, :, e[:, 0]] - x[:, :, e[:, 1]], axis=-1)
        assert bones.max() < 0.7 and np.median(bones) > 0.05
        assert bones.std(axis=1).mean() < 0.05  # rigid limbs up to sensor noise
        assert np.abs(x).max() < 3


def test_deterministic_and_cached(tmp_path, default_store):
    store, cache = default_store
    small = dict(num_classes=4, train_per_class=3, test_per_class=2)
    a = SyntheticSource(**small).build(tmp_path / "a")
    b = SyntheticSource(**small).build(tmp_path / "b")
    assert a.index_checksum == b.index_checksum
    for i in range(len(a)):
        np.testing.assert_array_equal(a.get(i), b.get(i))
    # a sample does not depend on how many were asked for
    np.testing.assert_array_equal(a.get(0), store.get(0))
    c = SyntheticSource(**small, seed=1).build(tmp_path / "a")
    assert c.root != a.root and not np.array_equal(c.get(0), a.get(0))
    stamp = (store.root / "meta.json").stat().st_mtime_ns
    again = SyntheticSource().build(cache)
    # Reused, not rebuilt: the cached store's files are untouched.
    assert again.root == store.root and (store.root / "meta.json").stat().st_mtime_ns == stamp


def test_difficulty_knobs():
    x0, _ = generate_sample(0, 1, 2, 7, noise=0.0)
    x1, _ = generate_sample(0, 1, 2, 7, noise=0.05)
    assert x0.shape == x1.shape
    assert 0.03 < np.std(x1 - x0) < 0.07
    with pytest.raises(ValueError):
        SyntheticSource(num_classes=17)
