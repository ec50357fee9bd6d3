"""The shipped zoo: models load by name, and a file whose hash differs is refused."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA
from last_lite.zoo import ZOO_DIR, load_zoo_model, zoo_index


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_zoo_models_load_by_name_and_run(name):
    model, entry = load_zoo_model(name)
    spec = entry["model_spec"]
    joints = {"ucla20": 20, "ntu25": 25}[spec["layout"]]
    logits = model(torch.zeros(1, spec.get("in_channels", 3), entry["data_spec"]["clip_len"], joints, 1))
    assert logits.shape == (1, spec["num_classes"])
    assert 0 < entry["metrics"]["top1"] <= 1


def test_a_tampered_zoo_file_is_refused(tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(ZOO_DIR, zoo)
    name = sorted(zoo_index(zoo))[0]
    path = zoo / zoo_index(zoo)[name]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_zoo_model(name, zoo)


def test_a_failed_add_leaves_the_entry_it_would_replace_whole(tmp_path):
    from last_lite.models import create_model
    from last_lite.zoo import add_to_zoo

    spec = {"name": "last_lite_nano", "num_classes": 4, "layout": "ntu25"}

    def checkpoint(seed: int) -> Path:
        torch.manual_seed(seed)
        model = create_model(**spec)
        path = tmp_path / f"run{seed}.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                    "hyper_parameters": {"model_spec": spec}}, path)
        return path

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"command": "train", "top1": 0.5}))
    zoo = tmp_path / "zoo"
    add_to_zoo("m", checkpoint(0), metrics, zoo)
    before = load_zoo_model("m", zoo)[0].state_dict()
    with pytest.raises(FileNotFoundError):
        add_to_zoo("m", checkpoint(1), tmp_path / "missing" / "metrics.json", zoo)
    pretrained = tmp_path / "pretrain.json"
    pretrained.write_text(json.dumps({"command": "pretrain"}))
    with pytest.raises(ValueError, match="classifier was never trained"):
        add_to_zoo("m", checkpoint(1), pretrained, zoo)
    after = load_zoo_model("m", zoo)[0].state_dict()  # verified: its file and hash still agree
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_weights_file_under_another_programs_index_json_is_still_found(tmp_path):
    from last_lite.zoo import zoo_entry_for_file

    name = sorted(zoo_index(ZOO_DIR))[0]
    path = ZOO_DIR / zoo_index(ZOO_DIR)[name]["file"]
    other = tmp_path / "elsewhere" / "x.safetensors"
    other.parent.mkdir()
    (tmp_path / "index.json").write_text("[1, 2, 3]")  # a JSON list, not a zoo index
    (other.parent / "index.json").write_text("{not json")
    assert zoo_entry_for_file(other) is None
    assert zoo_entry_for_file(path)[0] == name


def _with_onnx(tmp_path):
    """A copy of the zoo whose first entry ships only a (tiny, hand-built) INT8 ONNX file."""
    import onnx
    from onnx import TensorProto, helper

    from last_lite.zoo import add_onnx_to_zoo

    zoo = tmp_path / "zoo"
    shutil.copytree(ZOO_DIR, zoo)
    name = sorted(zoo_index(zoo))[0]
    index = zoo_index(zoo)
    for kind in ("onnx_fp32", "onnx_int8"):
        index[name].pop(kind, None)
    (zoo / "index.json").write_text(json.dumps(index))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    source = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(source))
    record = {"evaluation": {"models": {"fp32": {"top1": 0.5}, "int8": {"top1": 0.25}}}}
    entry = add_onnx_to_zoo(name, "onnx_int8", source, record, zoo)
    return zoo, name, source, entry


def test_shipped_onnx_files_resolve_by_name_without_torch_and_are_hash_checked(tmp_path):
    from last_lite.zoo import add_onnx_to_zoo, zoo_onnx

    zoo, name, source, entry = _with_onnx(tmp_path)
    assert entry["test_top1"] == 0.25 and entry["bytes"] == source.stat().st_size
    path = zoo_onnx(name, zoo_dir=zoo)
    assert path.read_bytes() == source.read_bytes()
    with pytest.raises(KeyError, match="ships no onnx_fp32"):
        zoo_onnx(name, "onnx_fp32", zoo_dir=zoo)
    with pytest.raises(KeyError, match="before its ONNX files"):
        add_onnx_to_zoo("nowhere/model", "onnx_int8", source, {}, zoo)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        zoo_onnx(name, zoo_dir=zoo)


@pytest.mark.parametrize("name", sorted(n for n, e in zoo_index().items() if "onnx_int8" in e))
def test_shipped_int8_models_run_in_the_runtime_by_zoo_name(name):
    import numpy as np

    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import resolve_model

    rec = ActionRecognizer(resolve_model(f"zoo:{name}"))
    shape = (rec.info.clip_len, rec.info.num_joints, 3)
    frames = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    predictions = list(rec.stream(frames))
    assert predictions and predictions[-1].label in rec.info.class_names


UCLA_CLIPS = SHARED_DATA / "nw_ucla" / "all_sqe"


@pytest.mark.shared_data
@pytest.mark.skipif(not UCLA_CLIPS.is_dir(), reason=f"NW-UCLA not found at {UCLA_CLIPS} (../shared/data is absent "
                                                    "in a user's clone)")
@pytest.mark.parametrize("name", sorted(n for n, e in zoo_index().items()
                                        if "onnx_int8" in e and e["data_spec"].get("dataset") == "nw_ucla"))
def test_the_runtime_on_the_released_nw_ucla_files_scores_what_the_zoo_records(name):
    """Every test-view clip as released (all_sqe/*_v03.json) through the edge runtime's own reader and
    preprocessing: the INT8 model's accuracy is the one measured at export through the training
    data pipeline, to the clip."""
    from last_lite.data.sources.nw_ucla import read_sample
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import input_layout, load_recording, resolve_model

    rec = ActionRecognizer(resolve_model(f"zoo:{name}"), threads=1)
    clips = sorted(UCLA_CLIPS.glob("a*_s*_e*_v03.json"))
    right = 0
    for clip in clips:
        rec.set_input_layout(input_layout(str(clip), rec))
        _, whole = load_recording(str(clip), rec)
        right += rec.predict_clip(whole).class_index == read_sample(clip)[1]
    assert len(clips) == 464
    assert right == round(zoo_index()[name]["onnx_int8"]["test_top1"] * len(clips))
