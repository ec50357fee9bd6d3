"""Draw a skeleton clip as a GIF or MP4: ``python -m last_lite.render --input CLIP --out clip.gif
[--layout NAME] [--true LABEL] [--model zoo:...|FILE]``.

``CLIP`` is any clip of any layout: an NTU ``.skeleton`` (ntu25), a ``.npy`` (T, V, C) or
(M, T, V, C) or a ``.json`` document ``{"skeletons": [T][V][C]}`` (an NW-UCLA clip as released;
layout from ``--layout`` or the joint count), JSON lines (one frame per line as the runtime reads
them), or a store sample ``store:<store folder>:<index or sample name>`` (its true label from the
store). ``--model`` predicts on the clip with the edge runtime (the layout adapted
to the model's) and writes the predicted label and score beside the true one.

numpy + Pillow only (GIF); MP4 needs OpenCV (the demo environment has it). 3D clips are drawn
from the front (x right, y up; Kinect's camera space), 2D clips (coco17, openpose18, 2 channels, or
``--image-coords`` for x, y and a score on another layout) in image coordinates (y down). Also used
by ``evaluate wrong_clips=N``, which knows a clip's coordinates from its store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from last_lite.adapters import layout_from_joint_count
from last_lite.io import GrowingFile, atomic_write
from last_lite.skeleton import get_layout

PERSON_COLOURS = ((60, 200, 90), (70, 140, 240), (240, 160, 40), (220, 80, 200))
_2D_LAYOUTS = {"coco17", "openpose18"}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def clip_frames(keypoints: np.ndarray, layout: Any, size: int = 256, title: str = "",
                lines: Sequence[str] = (), image_coords: bool | None = None, max_frames: int = 300) -> list:
    """(M, T, V, C) or (T, V, C) keypoints -> a list of PIL images (absent joints, all zeros, skipped)."""
    from PIL import Image, ImageDraw

    x = np.asarray(keypoints, np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"keypoints must be (T, V, C) or (M, T, V, C), got {x.shape}")
    lay = get_layout(layout)
    if x.shape[2] != lay.num_joints:
        raise ValueError(f"keypoints have {x.shape[2]} joints, layout {lay.name} has {lay.num_joints}")
    if image_coords is None:
        image_coords = lay.name in _2D_LAYOUTS or x.shape[3] < 3
    step = max(1, int(np.ceil(x.shape[1] / max_frames)))
    x = x[:, ::step]
    xy = x[..., :2].copy()
    if not image_coords:
        xy[..., 1] *= -1  # y up -> screen y down
    present = np.any(x[..., : min(3, x.shape[3])] != 0, axis=-1) & np.isfinite(x).all(axis=-1)
    header = 18 + 16 * (len(lines) + bool(title))
    if present.any():
        pts = xy[present]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    span = float(max(hi - lo)) or 1.0
    scale = (size - 24) / span
    offset = np.array([12.0, header + 6.0]) + ((size - 24) - (hi - lo) * scale) / 2 * np.array([1, 0])
    font = _font(12)
    frames = []
    for t in range(x.shape[1]):
        img = Image.new("RGB", (size, size + header), (250, 250, 250))
        draw = ImageDraw.Draw(img)
        for m in range(x.shape[0]):
            colour = PERSON_COLOURS[m % len(PERSON_COLOURS)]
            p = (xy[m, t] - lo) * scale + offset
            for i, j in lay.edges:
                if present[m, t, i] and present[m, t, j]:
                    draw.line([tuple(p[i]), tuple(p[j])], fill=colour, width=3)
            for v in range(lay.num_joints):
                if present[m, t, v]:
                    draw.ellipse([p[v][0] - 2.5, p[v][1] - 2.5, p[v][0] + 2.5, p[v][1] + 2.5], fill=(40, 40, 40))
        draw.rectangle([0, 0, size, header - 4], fill=(30, 30, 30))
        y = 3
        for text in ([title] if title else []) + list(lines):
            draw.text((6, y), text, fill=(255, 255, 255), font=font)
            y += 16
        draw.text((6, y), f"{lay.name}  frame {t * step + 1}/{x.shape[1] * step}", fill=(180, 180, 180), font=font)
        frames.append(img)
    return frames


def write_frames(frames: list, out: str | Path, fps: float = 15.0) -> Path:
    """PIL images -> ``out`` (.gif with Pillow, .mp4 with OpenCV)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError("no frames to write")
    if out.suffix.lower() == ".gif":
        return atomic_write(out, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                            duration=int(1000 / fps), loop=0, optimize=True))
    if out.suffix.lower() in (".mp4", ".avi"):
        try:
            import cv2
        except ImportError:
            raise ValueError("MP4 needs OpenCV (the [demo] extra, `make demo-env`); write a .gif instead") from None
        w, h = frames[0].size
        video = GrowingFile(out)
        try:
            writer = cv2.VideoWriter(str(video.partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            for f in frames:
                writer.write(cv2.cvtColor(np.asarray(f), cv2.COLOR_RGB2BGR))
            writer.release()
            return video.commit()
        except BaseException:
            video.discard()
            raise
    raise ValueError(f"unknown output type {out.suffix!r}: .gif or .mp4")


def render_clip(keypoints: np.ndarray, layout: Any, out: str | Path, true_label: str | None = None,
                predicted: str | None = None, title: str = "", fps: float = 15.0, size: int = 256,
                image_coords: bool | None = None) -> Path:
    """Draw a clip (M, T, V, C) of ``layout`` with its true and predicted labels into a GIF or MP4."""
    lines = []
    if true_label is not None:
        lines.append(f"true: {true_label}")
    if predicted is not None:
        lines.append(f"predicted: {predicted}")
    return write_frames(clip_frames(keypoints, layout, size=size, title=title, lines=lines,
                                    image_coords=image_coords), out, fps)


def load_clip(source: str, layout: str | None = None, persons: int = 4) -> tuple[np.ndarray, str, str | None]:
    """(keypoints (M, T, V, C), layout name, true label or None) of a clip file or store sample."""
    if source.startswith("store:"):
        from last_lite.data.store import SkeletonStore

        root, _, which = source[len("store:"):].rpartition(":")
        store = SkeletonStore(root)
        index = int(which) if which.isdigit() else store.names.index(which)
        label = int(store.labels[index])
        names = store.class_names
        true = names[label] if 0 <= label < len(names) else (str(label) if label >= 0 else None)
        lay = store.layout
        return np.asarray(store.get(index), np.float32), layout or (lay if isinstance(lay, str) else "custom"), true
    path = Path(source)
    if path.suffix == ".skeleton":
        from last_lite.runtime.__main__ import read_ntu_skeleton

        return read_ntu_skeleton(path), layout or "ntu25", None
    if path.suffix == ".npy":
        from last_lite.runtime.inputs import read_npy_recording, read_npy_shape

        shape = read_npy_shape(path)
        if len(shape) not in (3, 4):
            raise ValueError(f"{path}: keypoints must be (T, V, C) or (M, T, V, C), got {shape}")
        return read_npy_recording(path, shape[-2], shape[-1], persons), _layout(path, layout, shape[-2]), None
    from last_lite.runtime.inputs import frames_from_json_lines, read_skeletons_document

    document = read_skeletons_document(path) if path.suffix == ".json" else None
    if document is not None:  # an NW-UCLA all_sqe clip
        return document, _layout(path, layout, document.shape[-2]), None
    # JSON lines: the joint and channel counts from the first frame with a person
    with open(path, "rb") as fh:
        first = None
        for line in fh:
            text = line.strip()
            if text and not text.startswith(b"#"):
                obj = json.loads(text)
                people = obj.get("persons") if isinstance(obj, dict) else obj
                people = [p for p in (people or []) if p]
                if people:
                    joint = next(j for j in people[0] if j is not None)
                    first = (len(people[0]), len(joint))
                    break
        if first is None:
            raise ValueError(f"{path}: no frame with a person")
        fh.seek(0)
        frames = list(frames_from_json_lines(fh, first[0], first[1], persons))
    m = max(1, max(f.shape[0] for f in frames))
    x = np.zeros((m, len(frames), first[0], first[1]), np.float32)
    for t, f in enumerate(frames):
        x[: f.shape[0], t] = f
    return x, _layout(path, layout, first[0]), None


def _layout(path: Path, given: str | None, joints: int) -> str:
    """``given``, else the built-in layout with ``joints`` joints."""
    name = given or layout_from_joint_count(joints)
    if name is None:
        raise ValueError(f"{path}: {joints} joints: give the layout with --layout")
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m last_lite.render", description="Draw a skeleton clip as GIF or MP4.")
    p.add_argument("--input", required=True,
                   help="a .skeleton, .npy, NW-UCLA .json, JSON-lines file, or store:<folder>:<index or name>")
    p.add_argument("--out", required=True, help="the .gif or .mp4 to write")
    p.add_argument("--layout", help="the clip's layout (default: from the file or its joint count)")
    p.add_argument("--true", dest="true_label", help="the true label to write (a store sample has its own)")
    p.add_argument("--model", help="predict with this exported model (.onnx or zoo:<name>) and write the label")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--size", type=int, default=256, help="width in pixels")
    p.add_argument("--image-coords", action="store_true", default=None,
                   help="2D keypoints in image coordinates, y down (default for coco17, openpose18 and "
                        "2-channel clips; give it for x, y, score clips of other layouts)")
    args = p.parse_args(argv)
    try:
        x, layout, true = load_clip(args.input, args.layout)
        predicted = None
        if args.model:
            from last_lite.runtime import ActionRecognizer
            from last_lite.runtime.__main__ import resolve_model

            rec = ActionRecognizer(resolve_model(args.model), input_layout=layout, threads=1)
            pred = rec.predict_clip(x)
            predicted = f"{pred.label} {pred.score:.2f}"
        out = render_clip(x, layout, args.out, true_label=args.true_label or true, predicted=predicted,
                          title=Path(args.input).name, fps=args.fps, size=args.size,
                          image_coords=args.image_coords)
    except (ValueError, OSError, KeyError) as exc:
        print(f"last_lite.render: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {x.shape[1]} frames of {layout}" + (f"; predicted {predicted}" if predicted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
