"""Layout adapters (last_lite/adapters.py) and the runtime's --layout: ntu25 -> ucla20 is the joint
subset, MediaPipe's 33 landmarks give plausible Kinect skeletons, a missing adapter names both
layouts, and NTU .skeleton files run through the NW-UCLA zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from last_lite.adapters import AdapterError, adapter_pairs, get_adapter, layout_from_joint_count
from last_lite.runtime.__main__ import cli
from last_lite.skeleton import LAYOUTS

REPO = Path(__file__).resolve().parents[2]
NTU_RAW = REPO.parent / "shared" / "data" / "ntu" / "raw"
MEDIAPIPE = json.loads((REPO / "tests" / "data" / "mediapipe_astronaut.json").read_text())
NTU_TO_UCLA = [0, 1, 20, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


def test_ntu25_to_ucla20_is_the_joint_subset():
    adapter = get_adapter("ntu25", "ucla20")
    assert adapter.is_subset
    x = np.random.default_rng(0).normal(size=(2, 7, 25, 3)).astype(np.float32)
    np.testing.assert_array_equal(adapter.apply(x), x[..., NTU_TO_UCLA, :])
    # names agree joint by joint (v1's ShoulderCenter is v2's SpineShoulder)
    ntu, ucla = LAYOUTS["ntu25"].joint_names, LAYOUTS["ucla20"].joint_names
    for out, src in enumerate(NTU_TO_UCLA):
        assert ucla[out] == ntu[src] or (ucla[out], ntu[src]) in {("HipCenter", "SpineBase"), (
            "Spine", "SpineMid"), ("ShoulderCenter", "SpineShoulder")}
    assert get_adapter("kinect20", "ucla20") is None and get_adapter("ntu25", "ntu25") is None


def test_every_adapter_is_affine_and_the_tables_match_the_layouts():
    for src, dst in adapter_pairs():
        a = get_adapter(src, dst)
        assert a.matrix.shape == (LAYOUTS[dst].num_joints, LAYOUTS[src].num_joints)
        np.testing.assert_allclose(a.matrix.sum(axis=1), 1.0)
    # coco17 -> openpose18 -> coco17 is the identity
    np.testing.assert_array_equal(get_adapter("openpose18", "coco17").matrix @ get_adapter("coco17", "openpose18").matrix,
                                  np.eye(17))
    assert {layout_from_joint_count(n) for n in (25, 20, 17, 18, 33)} == {"ntu25", "ucla20", "coco17",
                                                                          "openpose18", "mediapipe33"}


def test_missing_adapter_names_both_layouts():
    with pytest.raises(AdapterError, match="from ucla20 to mediapipe33"):
        get_adapter("ucla20", "mediapipe33")
    with pytest.raises(AdapterError, match="unknown layout 'kinect99'"):
        get_adapter("kinect99", "ucla20")


def test_absent_joints_stay_absent():
    x = np.random.default_rng(1).normal(size=(33, 3)).astype(np.float32)
    x[24] = 0  # right hip missing: the hip centre (SpineBase) and SpineMid are absent, not halved
    y = get_adapter("mediapipe33", "ntu25").apply(x)
    assert not y[0].any() and not y[1].any() and not y[16].any() and y[12].any()
    assert get_adapter("mediapipe33", "ntu25").apply(x, mask_absent=False)[0].any()


def _bones(x: np.ndarray, layout: str) -> dict[tuple[str, str], float]:
    names = LAYOUTS[layout].joint_names
    return {(names[i], names[j]): float(np.linalg.norm(x[i] - x[j])) for i, j in LAYOUTS[layout].edges}


def test_mediapipe_adapters_keep_bone_lengths_plausible():
    """Real MediaPipe world landmarks (metres; mediapipe 0.10.21 on the astronaut photograph,
    tests/data/mediapipe_astronaut.json): the adapted Kinect skeletons have human proportions."""
    world = np.asarray(MEDIAPIPE["world_xyz_m"], np.float32)
    ntu = get_adapter("mediapipe33", "ntu25").apply(world)
    ucla = get_adapter("mediapipe33", "ucla20").apply(world)
    np.testing.assert_allclose(ucla, ntu[NTU_TO_UCLA], atol=1e-6)  # the chain is the composition
    bones = _bones(ntu, "ntu25")
    assert all(0.02 < length < 0.6 for length in bones.values()), bones
    torso = np.linalg.norm(ntu[0] - ntu[20])
    shoulders = np.linalg.norm(ntu[4] - ntu[8])
    assert 0.3 < torso < 0.7 and 0.2 < shoulders < 0.5
    for upper, lower in ((("ElbowL", "ShoulderL"), ("WristL", "ElbowL")), (("ElbowR", "ShoulderR"), ("WristR", "ElbowR"))):
        assert 0.15 < bones[upper] < 0.4 and 0.12 < bones[lower] < 0.35
    # left is the person's left in both sensors: the adapted left shoulder is MediaPipe's left one
    np.testing.assert_array_equal(ntu[4], world[11])
    # 2D image landmarks through mediapipe33 -> coco17 -> openpose18: the neck between the shoulders
    image = np.asarray(MEDIAPIPE["image_xy_px_visibility"], np.float32)
    op = get_adapter("mediapipe33", "openpose18").apply(image)
    np.testing.assert_allclose(op[1, :2], (image[11, :2] + image[12, :2]) / 2, atol=1e-4)


def _zoo_model() -> str:
    index = json.loads((REPO / "zoo" / "index.json").read_text())
    if "nw_ucla/last_lite_small" not in index:
        pytest.skip("zoo model nw_ucla/last_lite_small is not in zoo/index.json")
    return "zoo:nw_ucla/last_lite_small"


def test_runtime_adapts_ntu25_npy_and_refuses_unknown_pairs(tmp_path, capsys):
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import resolve_model

    model = resolve_model(_zoo_model())
    rng = np.random.default_rng(2)
    clip = (rng.normal(size=(1, 40, 25, 3)) * 0.2 + [0, 0, 3]).astype(np.float32)
    adapted = ActionRecognizer(model, input_layout="ntu25", threads=1).predict_clip(clip)
    direct = ActionRecognizer(model, threads=1).predict_clip(clip[:, :, NTU_TO_UCLA])
    np.testing.assert_allclose(adapted.probabilities, direct.probabilities, atol=1e-6)
    # streaming frames in the input layout; a 25-joint frame without a layout names the way out
    rec = ActionRecognizer(model, input_layout="ntu25", stride=8, threads=1)
    assert [p for p in rec.stream(clip[:, t] for t in range(40))]
    with pytest.raises(ValueError, match="ntu25"):
        ActionRecognizer(model, threads=1).push(clip[:, 0])
    np.save(tmp_path / "rec25.npy", clip)  # the layout told by the joint count
    assert cli(["--model", model, "--input", str(tmp_path / "rec25.npy"), "--threads", "1"]) == 0
    assert "input ntu25 adapted to ucla20" in capsys.readouterr().out
    assert cli(["--model", model, "--input", str(tmp_path / "rec25.npy"), "--layout", "coco17"]) == 2
    err = capsys.readouterr().err
    assert "from coco17 to ucla20" in err and "Traceback" not in err


@pytest.mark.shared_data
def test_ntu_raw_skeletons_run_through_the_nw_ucla_zoo_model(capsys):
    files = sorted(NTU_RAW.glob("*.skeleton"))[:3]
    if not files:
        pytest.skip(f"no NTU .skeleton files in {NTU_RAW}")
    model = _zoo_model()
    for path in files:
        assert cli(["--model", model, "--input", str(path), "--whole", "--threads", "1"]) == 0, path
        out = capsys.readouterr().out
        assert "input ntu25 adapted to ucla20" in out and "whole recording" in out
