"""The edge demo end to end (issue 18): a short video of the astronaut photograph (a real person,
scikit-image's data.astronaut(), with small shifts and rotations per frame) -> MediaPipe pose ->
mediapipe33 -> ucla20 adapter -> the NW-UCLA zoo model's sliding window -> an annotated video.

The demo needs the [demo] extra (mediapipe 0.10.21, which needs protobuf < 5, so it lives in a
runtime environment of its own: `make demo-env` makes .venv-demo, which `make test` builds). The
test runs the demo with that interpreter ($LAST_LITE_DEMO_PYTHON, else .venv-demo/bin/python,
else this one when it has mediapipe) and skips, saying so, where none has the extra."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMES = 40


def demo_python() -> str | None:
    for candidate in (os.environ.get("LAST_LITE_DEMO_PYTHON"), str(REPO / ".venv-demo" / "bin" / "python")):
        if candidate and Path(candidate).is_file():
            return candidate
    if importlib.util.find_spec("mediapipe") is not None and importlib.util.find_spec("cv2") is not None:
        return sys.executable
    return None


def _run(python: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([python, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_demo_end_to_end_on_the_astronaut_video(tmp_path):
    python = demo_python()
    if python is None:
        pytest.skip("the [demo] extra is absent (no .venv-demo, no mediapipe here): `make demo-env`")
    video, out, summary = tmp_path / "astronaut.mp4", tmp_path / "annotated.mp4", tmp_path / "summary.json"
    code = (f"from last_lite.demo import make_test_video; make_test_video({str(video)!r}, frames={FRAMES})")
    _run(python, "-c", code)
    proc = _run(python, "-m", "last_lite.demo", "--video", str(video), "--model", "zoo:nw_ucla/last_lite_small",
                "--out", str(out), "--summary", str(summary), "--threads", "1")
    s = json.loads(summary.read_text())
    assert s["frames"] == FRAMES
    assert s["frames_with_pose"] >= 0.8 * FRAMES, s  # a pose in most frames
    assert s["predictions"], s
    classes = json.loads((REPO / "zoo" / "index.json").read_text())["nw_ucla/last_lite_small"]["data_spec"]["class_names"]
    assert all(p["label"] in classes and 0 < p["score"] <= 1 for p in s["predictions"])
    assert s["pose_latency"]["count"] == FRAMES and s["action_latency"]["count"] == len(s["predictions"])
    assert "pose latency per frame: p50" in proc.stdout and "action latency per prediction: p50" in proc.stdout
    # the annotated video decodes, frame for frame
    check = _run(python, "-c", f"from last_lite.demo import count_video_frames; print(*count_video_frames({str(out)!r}))")
    n, size = check.stdout.split(maxsplit=1)
    assert int(n) == FRAMES and "320" in size


def test_demo_without_the_extra_says_how_to_install(tmp_path):
    if importlib.util.find_spec("mediapipe") is not None:
        pytest.skip("mediapipe is installed here")
    proc = subprocess.run([sys.executable, "-m", "last_lite.demo", "--video", str(tmp_path / "x.mp4")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "mediapipe==0.10.21" in proc.stderr and "pip install" in proc.stderr


def test_make_test_video_without_its_file_says_so(capsys):
    from last_lite.demo import main

    assert main(["--make-test-video"]) == 2
    assert "needs the file to write" in capsys.readouterr().err
