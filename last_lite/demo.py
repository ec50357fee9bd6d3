"""The edge demo: ``python -m last_lite.demo --video FILE | --camera N [--model zoo:...|FILE]
[--out FILE.mp4] [--show]``.

Frames -> MediaPipe Pose (its 3D "world" landmarks in metres for a 3D model, its image landmarks
(x px, y px, visibility) for a 2D one) -> the layout adapter (mediapipe33 -> the model's layout,
last_lite/adapters.py) -> the runtime's sliding window (:class:`last_lite.runtime.ActionRecognizer`)
-> the label and score drawn on the video with the skeleton. At the end it prints the per-frame
pose latency and the action latency (normalisation + model, per prediction) as p50 / p95.

Needs the ``demo`` extra (mediapipe 0.10.21, whose wheel bundles the pose models, so it runs
offline; OpenCV comes with it). Like the runtime it never imports torch, and mediapipe 0.10.21
needs protobuf < 5, which the training stack's onnx does not accept: install it in a runtime
environment of its own (``make demo-env`` makes ``.venv-demo``; docs/runtime.md, "The demo").

MediaPipe's world landmarks are centred on the hips with x to the person's left (image right), y
down and z away from the camera; Kinect's camera space has x to the sensor's left, y up and z away
from the sensor, so (x, y, z) -> (-x, -y, z + 3 m) (a 180-degree turn about z and the person 3 m
in front of the sensor; the models' pre-normalisation removes both anyway).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from last_lite.io import GrowingFile, atomic_write_json
from last_lite.skeleton import LAYOUTS

INSTALL_HINT = ("python -m venv .venv-demo && .venv-demo/bin/pip install --no-deps -e . && "
                ".venv-demo/bin/pip install 'mediapipe==0.10.21' 'scikit-image>=0.22' onnxruntime "
                "(or `make demo-env`; see docs/runtime.md, 'The demo')")
KINECT_DISTANCE_M = 3.0


class DemoDependencyError(RuntimeError):
    """mediapipe or OpenCV is missing."""


def require_demo_packages() -> tuple[Any, Any]:
    """(cv2, mediapipe), or DemoDependencyError with the install command."""
    missing = []
    try:
        import cv2
    except ImportError:
        cv2 = None
        missing.append("opencv")
    try:
        import mediapipe as mp
    except ImportError:
        mp = None
        missing.append("mediapipe==0.10.21")
    if missing:
        raise DemoDependencyError(f"the demo needs {' and '.join(missing)} (the [demo] extra): {INSTALL_HINT}")
    return cv2, mp


def world_to_kinect(world: np.ndarray) -> np.ndarray:
    """MediaPipe world landmarks (33, 3) -> Kinect camera-space axes (see the module docstring)."""
    out = np.asarray(world, np.float32).copy()
    out[:, 0] *= -1
    out[:, 1] *= -1
    out[:, 2] += KINECT_DISTANCE_M
    return out


class PoseEstimator:
    """MediaPipe Pose (model_complexity=1: the full landmark model the 0.10.21 wheel bundles)."""

    def __init__(self, mp: Any, static: bool = False) -> None:
        self.pose = mp.solutions.pose.Pose(static_image_mode=static, model_complexity=1,
                                           smooth_landmarks=True, min_detection_confidence=0.5,
                                           min_tracking_confidence=0.5)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(world (33, 3) metres, image (33, 3) = x px, y px, visibility), or (None, None)."""
        res = self.pose.process(rgb)
        if res.pose_landmarks is None or res.pose_world_landmarks is None:
            return None, None
        h, w = rgb.shape[:2]
        image = np.array([[lm.x * w, lm.y * h, lm.visibility] for lm in res.pose_landmarks.landmark], np.float32)
        world = np.array([[lm.x, lm.y, lm.z] for lm in res.pose_world_landmarks.landmark], np.float32)
        return world, image

    def close(self) -> None:
        self.pose.close()


def draw(cv2: Any, bgr: np.ndarray, image_pts: np.ndarray | None, text: str, sub: str) -> np.ndarray:
    """The MediaPipe skeleton (its 33 landmarks and connections) and the label lines on a frame."""
    if image_pts is not None:
        pts = [(int(round(x)), int(round(y))) for x, y, _ in image_pts]
        for i, j in LAYOUTS["mediapipe33"].edges:
            if image_pts[i, 2] > 0.3 and image_pts[j, 2] > 0.3:
                cv2.line(bgr, pts[i], pts[j], (80, 220, 80), 2, cv2.LINE_AA)
        for k, p in enumerate(pts):
            if image_pts[k, 2] > 0.3:
                cv2.circle(bgr, p, 3, (40, 40, 230), -1, cv2.LINE_AA)
    h, w = bgr.shape[:2]
    scale = max(0.4, w / 640)
    cv2.rectangle(bgr, (0, 0), (w, int(52 * scale)), (0, 0, 0), -1)
    cv2.putText(bgr, text, (8, int(22 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(bgr, sub, (8, int(44 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (200, 200, 200), 1, cv2.LINE_AA)
    return bgr


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    t = np.asarray(values, np.float64)
    return {"count": int(len(t)), "p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95))}


def run_demo(source: str | int, model: str = "zoo:nw_ucla/last_lite_small", out: str | None = None,
             show: bool = False, stride: int | None = None, min_frames: int | None = None,
             threads: int | None = 1, max_frames: int | None = None, quiet: bool = False) -> dict:
    """Run the demo on a video file (or camera index); returns the summary (also printed)."""
    cv2, mp = require_demo_packages()
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import resolve_model

    rec = ActionRecognizer(resolve_model(model), stride=stride, threads=threads, input_layout="mediapipe33",
                           min_frames=min_frames)
    if min_frames is None:  # a demo shows something after half a window
        rec.min_frames = max(1, rec.window // 2)
    use_3d = rec.info.coord_dims >= 3
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open {'camera' if isinstance(source, int) else 'video'} {source}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    fps = fps if 1 <= fps <= 240 else 30.0
    pose = PoseEstimator(mp)
    writer = None
    video = GrowingFile(out) if out else None
    finished = False
    pose_ms: list[float] = []
    step_ms: list[float] = []
    predictions: list[dict] = []
    frames = found = 0
    label, score = "...", 0.0
    try:
        while max_frames is None or frames < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t0 = time.perf_counter()
            world, image = pose(rgb)
            pose_ms.append((time.perf_counter() - t0) * 1e3)
            if world is None:
                person = None
            else:
                found += 1
                person = world_to_kinect(world) if use_3d else image
            t1 = time.perf_counter()
            pred = rec.push(None if person is None else person[None])
            step_ms.append((time.perf_counter() - t1) * 1e3)
            if pred is not None:
                label, score = pred.label, pred.score
                predictions.append({"frame": frames, **pred.as_dict()})
            frames += 1
            text = f"{label}  {score:.2f}" if predictions else "(collecting frames)"
            sub = f"frame {frames}  pose {pose_ms[-1]:.0f} ms  {'3D world' if use_3d else '2D'} -> {rec.layout.name}"
            if out or show:
                annotated = draw(cv2, bgr, image, text, sub)
                if out:
                    if writer is None:
                        writer = cv2.VideoWriter(str(video.partial), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                 (annotated.shape[1], annotated.shape[0]))
                    writer.write(annotated)
                if show:
                    cv2.imshow("last_lite demo", annotated)
                    if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                        break
        if not predictions:  # a clip shorter than min_frames: predict on what there is
            pred = rec.finish()
            if pred is not None:
                predictions.append({"frame": frames - 1, **pred.as_dict()})
        finished = True
    except KeyboardInterrupt:  # Ctrl-C ends a camera session: the video so far is kept
        finished = True
        raise
    finally:
        cap.release()
        pose.close()
        if writer is not None:
            writer.release()
            if finished:
                video.commit()
            else:
                video.discard()
        if show:
            cv2.destroyAllWindows()
    summary = {"frames": frames, "frames_with_pose": found, "predictions": predictions,
               "pose_latency": _percentiles(pose_ms), "action_latency": _percentiles(rec.latencies_ms),
               "push_latency": _percentiles(step_ms), "model": model, "model_layout": rec.layout.name,
               "input": "mediapipe33 world (3D)" if use_3d else "mediapipe33 image (2D)", "out": out}
    if not quiet:
        for p in predictions:
            print(f"frame {p['frame']:5d}: {p['label']:<28s} {p['score']:.3f}")
        pl, al = summary["pose_latency"], summary["action_latency"]
        print(f"{frames} frames, pose found in {found}; {len(predictions)} predictions")
        if pl.get("count"):
            print(f"pose latency per frame: p50 {pl['p50_ms']:.1f} ms, p95 {pl['p95_ms']:.1f} ms")
        if al.get("count"):
            print(f"action latency per prediction: p50 {al['p50_ms']:.2f} ms, p95 {al['p95_ms']:.2f} ms")
        if out:
            print(f"annotated video: {out}")
    return summary


def make_test_video(path: str | Path, frames: int = 24, size: int = 320, fps: float = 10.0, seed: int = 0) -> Path:
    """A short video of the astronaut photograph (scikit-image's ``data.astronaut()``, a real
    person) with a small shift and rotation per frame: the demo's end-to-end test input."""
    cv2, _ = require_demo_packages()
    from skimage import data

    rgb = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    rng = np.random.default_rng(seed)
    video = GrowingFile(path)
    writer = cv2.VideoWriter(str(video.partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for t in range(frames):
        angle = 4.0 * np.sin(2 * np.pi * t / max(frames, 1)) + rng.normal(0, 0.5)
        shift = (6.0 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1), 3.0 * np.cos(2 * np.pi * t / 12))
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        m[:, 2] += shift
        writer.write(cv2.warpAffine(bgr, m, (size, size), borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return video.commit()


def count_video_frames(path: str | Path) -> tuple[int, tuple[int, int]]:
    """(frames decoded, (width, height)) of a video file, by reading it through."""
    cv2, _ = require_demo_packages()
    cap = cv2.VideoCapture(str(path))
    n, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        size = (frame.shape[1], frame.shape[0])
    cap.release()
    return n, size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m last_lite.demo",
                                description="Video or camera -> MediaPipe pose -> action, drawn on the video.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file")
    src.add_argument("--camera", type=int, help="a camera index (e.g. 0)")
    p.add_argument("--model", default="zoo:nw_ucla/last_lite_small",
                   help="an exported .onnx or zoo:<name>[:onnx_fp32] (default: zoo:nw_ucla/last_lite_small)")
    p.add_argument("--out", help="write the annotated video here (.mp4)")
    p.add_argument("--show", action="store_true", help="show the annotated frames in a window (q quits)")
    p.add_argument("--stride", type=int, default=None, help="predict every N frames (default: clip/8)")
    p.add_argument("--min-frames", type=int, default=None, help="frames before the first prediction (default: half a window)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames (a camera runs until q otherwise)")
    p.add_argument("--summary", help="write the summary (predictions, latencies) as JSON here")
    p.add_argument("--make-test-video", metavar="FILE", help="write the astronaut test video to FILE and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and "--make-test-video" in sys.argv:
        argv = sys.argv[1:]
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--make-test-video" in raw:  # no --video/--camera needed
        i = raw.index("--make-test-video")
        if i + 1 == len(raw) or raw[i + 1].startswith("-"):
            print("last_lite.demo: error: --make-test-video needs the file to write, e.g. "
                  "--make-test-video astronaut.mp4", file=sys.stderr)
            return 2
        try:
            print(make_test_video(raw[i + 1]))
        except DemoDependencyError as exc:
            print(f"last_lite.demo: error: {exc}", file=sys.stderr)
            return 2
        return 0
    args = parse_args(raw)
    try:
        require_demo_packages()  # fail before anything else is done
        summary = run_demo(args.camera if args.video is None else args.video, model=args.model, out=args.out,
                           show=args.show, stride=args.stride, min_frames=args.min_frames,
                           threads=args.threads, max_frames=args.max_frames)
    except DemoDependencyError as exc:
        print(f"last_lite.demo: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"last_lite.demo: error: {exc}", file=sys.stderr)
        return 2
    if args.summary:
        atomic_write_json(args.summary, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
