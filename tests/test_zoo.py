"""The shipped zoo: models load by name, and a file whose hash differs is refused."""

import shutil

import pytest
import torch

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
