"""NW-UCLA from the real all_sqe release in ../shared/data (skipped where absent)."""

import os
from pathlib import Path

import numpy as np
import pytest

from last_lite.data.sources.nw_ucla import CLASS_NAMES, NWUCLASource, parse_name, read_sample

SHARED = Path(os.environ.get("LAST_LITE_SHARED_DATA",
                             Path(__file__).resolve().parents[2].parent / "shared" / "data"))
UCLA = SHARED / "nw_ucla"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not (UCLA / "all_sqe").is_dir(),
                       reason=f"NW-UCLA not found at {UCLA} (../shared/data is absent in a user's clone)"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return NWUCLASource(UCLA).build(tmp_path_factory.mktemp("cache"))


def test_sizes_split_and_classes(store):
    assert len(store) == 1484
    train, test = store.split("xview", "train"), store.split("xview", "test")
    assert len(train) == 1020 and len(test) == 464
    assert not set(train.tolist()) & set(test.tolist())
    view = store.field("view")
    assert set(view[train]) == {1, 2} and set(view[test]) == {3}
    assert (view == 1).sum() == 516 and (view == 2).sum() == 504
    assert store.num_classes == 10 and store.class_names == list(CLASS_NAMES)
    assert set(store.labels.tolist()) == set(range(10))
    assert store.layout == "ucla20" and store.channels == 3 and store.num_joints == 20
    assert store.lengths.min() == 1 and store.lengths.max() == 201
    assert store.nonfinite == []


def test_fields_and_single_frame_files(store):
    i = store.names.index("a02_s09_e04_v03")
    assert store.get(i).shape == (1, 1, 20, 3)
    assert store.labels[i] == 1
    assert store.field("subject")[i] == 9 and store.field("repetition")[i] == 4
    j = store.names.index("a12_s01_e00_v01")
    assert store.labels[j] == 9 and store.field("action")[j] == 12
    assert parse_name("a11_s10_e02_v03") == {"action": 11, "subject": 10, "repetition": 2, "view": 3}


def test_pre_normalised(store):
    raw, label = read_sample(UCLA / "all_sqe" / "a01_s01_e00_v01.json")
    assert raw.shape[2:] == (20, 3) and label == 0
    x = store.get(store.names.index("a01_s01_e00_v01"))
    assert x.shape[1] == raw.shape[1]
    np.testing.assert_allclose(x[0, 0, 1], 0, atol=1e-6)            # centred on the spine
    sh = x[0, 0, 8] - x[0, 0, 4]
    assert sh[0] > 0 and np.allclose(sh[1:], 0, atol=1e-5)           # shoulders along +x
    bones = lambda a: np.linalg.norm(a[0, :, 2] - a[0, :, 3], axis=-1)  # noqa: E731
    np.testing.assert_allclose(bones(x), bones(raw), atol=1e-5)        # rigid motion
