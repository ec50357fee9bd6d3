"""python -m last_lite.render: any clip of any layout as a GIF with its labels."""

import json

import numpy as np
from PIL import Image

from last_lite.render import load_clip, main, render_clip


def test_render_npy_jsonl_and_a_prediction(tmp_path, capsys):
    rng = np.random.default_rng(0)
    clip = (rng.normal(size=(1, 20, 25, 3)) * 0.2 + [0, 0, 3]).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    assert main(["--input", str(tmp_path / "clip.npy"), "--out", str(tmp_path / "a.gif"),
                 "--model", "zoo:nw_ucla/last_lite_small", "--true", "sit down"]) == 0
    assert "20 frames of ntu25; predicted" in capsys.readouterr().out
    assert Image.open(tmp_path / "a.gif").n_frames == 20
    # 2D JSON lines (coco17 told by 17 joints), a frame without anybody in the middle
    lines = [json.dumps({"persons": [(rng.random((17, 3)) * 100).tolist()]}) for _ in range(5)]
    lines.insert(2, json.dumps({"persons": []}))
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    x, layout, true = load_clip(str(tmp_path / "c.jsonl"))
    assert layout == "coco17" and x.shape == (1, 6, 17, 3) and true is None
    out = render_clip(x, layout, tmp_path / "c.gif", true_label="x", predicted="y 0.5")
    assert Image.open(out).n_frames == 6
    assert main(["--input", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "c.txt")]) == 2


def test_render_an_nw_ucla_clip_as_released(tmp_path):
    rng = np.random.default_rng(1)
    skeletons = (rng.normal(size=(7, 20, 3)) * 0.2 + [0, 0, 3]).astype(np.float32)
    clip = tmp_path / "a12_s10_e00_v03.json"
    clip.write_text(json.dumps({"file_name": clip.stem, "label": 10, "skeletons": skeletons.tolist()}))
    x, layout, true = load_clip(str(clip))
    assert layout == "ucla20" and true is None
    np.testing.assert_allclose(x, skeletons[None])
    assert main(["--input", str(clip), "--out", str(tmp_path / "u.gif")]) == 0
    assert Image.open(tmp_path / "u.gif").n_frames == 7



def test_x_y_score_clips_of_other_layouts_are_drawn_y_down_when_told(tmp_path):
    """A tracker's x, y (pixels, y down) and score on a layout not known as 2D (mediapipe33): the
    nose (small y) is drawn at the top with --image-coords, at the bottom without."""
    from last_lite.render import clip_frames

    clip = np.zeros((1, 1, 33, 3), np.float32)
    clip[0, 0, 0] = [120, 10, 0.9]   # the nose, alone at the top of the image
    clip[0, 0, 31] = [100, 300, 0.9]  # two feet at the bottom, apart
    clip[0, 0, 32] = [140, 300, 0.9]

    def widths(frame, header=18):  # the spread of the joints drawn in the top and in the bottom rows
        rows, cols = np.nonzero((np.asarray(frame)[header:] <= 60).all(axis=-1))  # joints: dark dots
        top, bottom = cols[rows <= rows.min() + 4], cols[rows >= rows.max() - 4]
        return np.ptp(top), np.ptp(bottom)

    top, bottom = widths(clip_frames(clip, "mediapipe33", image_coords=True)[0])
    assert top < 10 < bottom
    top, bottom = widths(clip_frames(clip, "mediapipe33")[0])  # a 3-channel mediapipe33 clip reads as 3D: y up
    assert bottom < 10 < top
    np.save(tmp_path / "pose.npy", clip)
    assert main(["--input", str(tmp_path / "pose.npy"), "--layout", "mediapipe33", "--image-coords",
                 "--out", str(tmp_path / "pose.gif")]) == 0
    top, bottom = widths(Image.open(tmp_path / "pose.gif").convert("RGB"), header=34)  # with the file's name
    assert top < 10 < bottom
