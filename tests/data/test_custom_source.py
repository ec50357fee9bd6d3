"""data=custom: layout files, facts read from the data, class names, labels.csv rules."""

from __future__ import annotations

import pytest

from last_lite.data.datamodule import SkeletonDataModule
from last_lite.data.sources.custom import CustomSource, label_kind
from own_data import CLASSES, make_clips


def _store(root, tmp_path, **kw):
    return CustomSource(root, layout=kw.pop("layout", "layout.yaml"), **kw).build(tmp_path / "cache")


def test_a_3d_folder_with_its_own_layout_file_and_class_names(tmp_path):
    root = make_clips(tmp_path / "clips3d", per_class=3, persons=2)
    store = _store(root, tmp_path)
    assert store.coord_dims == 3 and store.channels == 3  # read from the data, not a 2D default
    assert store.class_names == CLASSES  # classes.txt
    assert store.layout["name"] == "two_arms" and store.layout["num_joints"] == 6
    dm = SkeletonDataModule(CustomSource(root, layout="layout.yaml"), split="custom",
                            clip_len=8, max_persons=None, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert dm.max_persons == 2 and len(dm.test_indices) == 6


def test_2d_with_scores_and_integer_labels(tmp_path):
    root = make_clips(tmp_path / "clips2d", per_class=3, dims=2, label_names=False)
    (root / "classes.txt").unlink()
    store = _store(root, tmp_path)
    assert store.coord_dims == 2 and store.channels == 3  # x, y, score
    assert store.class_names == ["0", "1", "2"]
    names = _store(root, tmp_path / "b", class_names=["a", "b", "c"]).class_names
    assert names == ["a", "b", "c"]


@pytest.mark.parametrize("bad", ["1.7", "true", "2.0"])
def test_labels_that_are_not_a_class_are_refused(tmp_path, bad):
    root = make_clips(tmp_path / "c", per_class=2, label_names=False)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 2)[0] + f",{bad},train"
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        _store(root, tmp_path)
    assert [label_kind(s) for s in ("3", "", "-1", "walk")] == ["index", "none", "none", "name"]


def test_one_name_in_two_splits_is_one_sample_and_a_clash_is_named(tmp_path):
    root = make_clips(tmp_path / "c", per_class=2)
    csv = root / "labels.csv"
    csv.write_text(csv.read_text() + "clips/wave_00,wave,val\n")
    store = _store(root, tmp_path)
    val, test = store.split("custom", "val"), store.split("custom", "test")
    assert len(store) == 6 and len(val) == 1 and val[0] in test
    csv.write_text(csv.read_text() + "clips/wave_00,clap,train\n")
    with pytest.raises(ValueError, match="another label"):
        _store(root, tmp_path / "b")


def test_missing_files_and_bad_layouts_name_the_fix(tmp_path):
    root = make_clips(tmp_path / "c", per_class=2)
    with pytest.raises(ValueError, match="neither a known layout .* nor a layout file"):
        _store(root, tmp_path, layout="nolayout.yaml")
    (root / "clips" / "wave_01.npy").unlink()
    with pytest.raises(FileNotFoundError, match="relative to"):
        _store(root, tmp_path)
    with pytest.raises(FileNotFoundError, match="LAST_LITE_DATA"):
        _store(tmp_path / "nowhere", tmp_path)


def _dm(root, tmp_path, **kw):
    return SkeletonDataModule(CustomSource(root, layout="layout.yaml"), split="custom", clip_len=8,
                              max_persons=None, cache_dir=str(tmp_path / "cache"), **kw)


def test_an_unlabelled_test_row_is_refused_before_training(tmp_path):
    root = make_clips(tmp_path / "c", per_class=3)
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("clips/clap_00,clap,test", "clips/clap_00,,test"))
    with pytest.raises(ValueError, match=r"in test: clips/clap_00\. Unlabelled rows are only for "
                                         r"pretraining \(data.unlabelled=true"):
        _dm(root, tmp_path).setup()
    dm = _dm(root, tmp_path, unlabelled=True)
    dm.setup()
    assert len(dm.test_indices) == 6  # pretraining takes them


def test_one_file_under_two_spellings_is_one_clip_and_train_with_test_is_refused(tmp_path):
    root = make_clips(tmp_path / "c", per_class=3)
    csv = root / "labels.csv"
    text = csv.read_text()
    csv.write_text(text + "clips/wave_00.npy,wave,val\n")  # wave_00 is in test: val + test is fine
    store = _store(root, tmp_path)
    assert len(store) == 9 and "clips/wave_00.npy" not in store.names
    assert store.split("custom", "val").tolist() == [store.names.index("clips/wave_00")]
    csv.write_text(text + "./clips/wave_00,wave,train\n")
    with pytest.raises(ValueError, match=r"line 11: './clips/wave_00' \(the file of 'clips/wave_00', "
                                         r"line 2\) is listed in 'test' and 'train'.*leak"):
        _store(root, tmp_path / "b")
    csv.write_text(text + "clips/wave_00.npy,clap,test\n")
    with pytest.raises(ValueError, match="line 11: .* another label"):
        _store(root, tmp_path / "d")
    csv.write_text(text + "clips/wave_00.npy,wave,test\n")
    with pytest.raises(ValueError, match="line 11: .* twice in split 'test'"):
        _store(root, tmp_path / "e")


@pytest.mark.parametrize("bad", ["validation", "tset", "train_"])
def test_a_split_that_is_not_train_val_or_test_is_refused(tmp_path, bad):
    root = make_clips(tmp_path / "c", per_class=3)
    csv = root / "labels.csv"
    text = csv.read_text().replace("clips/clap_02,clap,train", "clips/clap_02,clap, Val ")
    csv.write_text(text)
    store = _store(root, tmp_path)  # case and spaces do not matter
    assert [store.names[i] for i in store.split("custom", "val")] == ["clips/clap_02"]
    csv.write_text(text.replace("clips/wave_02,wave,train", f"clips/wave_02,wave,{bad}"))
    with pytest.raises(ValueError, match=f"line 4: split '{bad}' is not train, val or test"):
        _store(root, tmp_path / "b")


def test_a_header_with_spaces_is_read_and_a_semicolon_file_is_named(tmp_path):
    root = make_clips(tmp_path / "c", per_class=2)
    csv = root / "labels.csv"
    text = csv.read_text()
    csv.write_text(text.replace("name,label,split", "name, label , split"))
    assert len(_store(root, tmp_path)) == 6
    csv.write_text(text.replace(",", ";"))
    with pytest.raises(ValueError, match="must be comma-separated"):
        _store(root, tmp_path / "b")
    csv.write_text(text.replace(",", "\t"))
    with pytest.raises(ValueError, match="must be comma-separated"):
        _store(root, tmp_path / "d")
