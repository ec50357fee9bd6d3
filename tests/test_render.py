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
