"""The edge recognizer: an exported ``.onnx`` model, frames in, predictions out.

Only numpy, onnxruntime and last_lite's numpy-only modules are imported (never torch), so the
runtime installs with ``pip install --no-deps last_lite`` + ``pip install numpy onnxruntime``.

The model file carries everything needed (``metadata_props`` written by ``last_lite.export``):
class names, skeleton layout, clip length, persons, channels and the test-time normalisation.
Every prediction runs :func:`last_lite.data.normalize.normalize_clip` with exactly the test
loader's arguments, so the deployed model sees the inputs it was evaluated on.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from last_lite.data.normalize import normalize_clip
from last_lite.skeleton import get_layout
from last_lite.runtime.session import ort_session

__all__ = ["ActionRecognizer", "ModelInfo", "Prediction", "as_frame", "read_model_info"]


@dataclass(frozen=True)
class Prediction:
    """One prediction: the top class, its softmax score, and how long it took.

    ``latency_ms`` covers the normalisation and the model run; ``frame_index`` is the index of the
    last frame the window holds (``-1`` for a whole-recording prediction); ``probabilities`` has
    one entry per class.
    """

    label: str
    score: float
    class_index: int
    latency_ms: float
    frame_index: int = -1
    window_frames: int = 0
    probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)

    def top(self, k: int, class_names: Sequence[str]) -> list[tuple[str, float]]:
        if self.probabilities is None:
            return [(self.label, self.score)]
        order = np.argsort(-self.probabilities)[:k]
        return [(class_names[i], float(self.probabilities[i])) for i in order]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 6), "class_index": self.class_index,
                "latency_ms": round(self.latency_ms, 3), "frame_index": self.frame_index,
                "window_frames": self.window_frames}


@dataclass(frozen=True)
class ModelInfo:
    """The metadata an exported model carries (see ``last_lite.export.onnx.build_metadata``)."""

    model: str
    class_names: tuple[str, ...]
    layout: Any
    clip_len: int
    max_persons: int
    in_channels: int
    coord_dims: int
    prenormalize: str | None
    mode: str
    crop_ratio: float
    num_clips: int
    spatial_norm: str | None
    input_name: str
    source: str | None
    raw: Mapping[str, Any]

    @property
    def num_joints(self) -> int:
        return get_layout(self.layout).num_joints


def _decode(meta: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            out[key] = value
    return out


def read_model_info(session_or_meta, input_name: str | None = None) -> ModelInfo:
    """ModelInfo from an InferenceSession (or its decoded/undecoded custom metadata map)."""
    if hasattr(session_or_meta, "get_modelmeta"):
        meta = _decode(session_or_meta.get_modelmeta().custom_metadata_map)
        input_name = input_name or session_or_meta.get_inputs()[0].name
    else:
        meta = _decode(dict(session_or_meta))
    missing = [k for k in ("class_names", "layout", "clip_len", "max_persons", "normalization")
               if k not in meta]
    if missing:
        raise ValueError(f"the model has no last_lite metadata ({', '.join(missing)} missing): "
                         f"export it with `python -m last_lite.export`")
    norm = dict(meta["normalization"] or {})
    pre = norm.get("prenormalize")
    in_channels = int(meta.get("in_channels", 3))
    return ModelInfo(
        model=str(meta.get("model", "?")), class_names=tuple(meta["class_names"]),
        layout=meta["layout"], clip_len=int(meta["clip_len"]), max_persons=int(meta["max_persons"]),
        in_channels=in_channels,
        coord_dims=int(norm.get("coord_dims", meta.get("coord_dims", min(in_channels, 3)))),
        prenormalize=None if pre in (None, "none") else str(pre),
        mode=str(norm.get("mode", "resize")), crop_ratio=float(norm.get("crop_ratio", 0.95)),
        num_clips=int(norm.get("num_clips", 1)),
        spatial_norm=None if norm.get("spatial_norm") in (None, "none") else str(norm["spatial_norm"]),
        input_name=input_name or "skeleton",
        source=norm.get("source"), raw=meta)


def as_frame(frame: Any, num_joints: int, channels: int) -> np.ndarray:
    """One frame as (persons, V, C) float32.

    Accepts an array (M, V, C) or (V, C) (one person), a list of persons (each a list of V
    joints, each a list of C numbers; a ``null`` joint or person is absent = zeros), a mapping
    ``{"persons": [...]}`` (the JSON-lines schema), or None / [] (nobody in the frame).
    """
    if isinstance(frame, Mapping):
        if "persons" not in frame:
            raise ValueError(f"a frame mapping needs a 'persons' key, got keys {sorted(frame)}")
        frame = frame["persons"]
    if frame is None:
        return np.zeros((0, num_joints, channels), np.float32)
    if not isinstance(frame, np.ndarray):
        persons = []
        for p, person in enumerate(frame):
            if person is None:
                persons.append(np.zeros((num_joints, channels), np.float32))
                continue
            if len(person) != num_joints:
                raise ValueError(f"person {p} has {len(person)} joints, the model's layout has {num_joints}")
            joints = np.zeros((num_joints, channels), np.float32)
            for j, joint in enumerate(person):
                if joint is None:
                    continue
                if len(joint) != channels:
                    raise ValueError(f"person {p} joint {j} has {len(joint)} values, the model "
                                     f"expects {channels}")
                joints[j] = joint
            persons.append(joints)
        return np.stack(persons) if persons else np.zeros((0, num_joints, channels), np.float32)
    arr = np.asarray(frame, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (num_joints, channels):
        raise ValueError(f"a frame must be (persons, {num_joints}, {channels}) or ({num_joints}, "
                         f"{channels}), got {arr.shape}")
    return arr


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z)
    return e / e.sum()


class ActionRecognizer:
    """Streaming recognizer over an exported ONNX model.

    ``push(frame)`` adds a frame to a sliding window of ``window`` frames (default: the model's
    clip length) and returns a :class:`Prediction` every ``stride`` frames once ``min_frames``
    frames are in (default: a full window), else None. ``finish()`` predicts on the frames pushed
    since the last prediction (the end of a short recording); ``predict_clip`` predicts on a whole
    recording (M, T, V, C) exactly as the test loader does.

    Persons must keep their slot from frame to frame (person 0 stays person 0). Frames hold raw
    coordinates: the model's normalisation (``prenormalize`` in the metadata) is applied per
    window. ``threads`` sets ONNX Runtime's intra-op threads; ``providers`` its execution providers.
    """

    def __init__(self, model_path: str | Path, window: int | None = None, stride: int | None = None,
                 min_frames: int | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        self.model_path = Path(model_path)
        self.session = ort_session(model_path, threads=threads, providers=providers, quiet=True)
        self.info = read_model_info(self.session)
        self.layout = get_layout(self.info.layout)
        self.window = int(window or self.info.clip_len)
        self.stride = int(stride or max(1, self.info.clip_len // 8))
        self.min_frames = int(min_frames or self.window)
        if self.window < 1 or self.stride < 1 or not 1 <= self.min_frames <= self.window:
            raise ValueError(f"need window >= 1, stride >= 1 and 1 <= min_frames <= window; got "
                             f"window={self.window}, stride={self.stride}, min_frames={self.min_frames}")
        self._frames: deque[np.ndarray] = deque(maxlen=self.window)
        self._count = 0
        self._since = 0
        self.latencies_ms: list[float] = []

    # -- facts ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def num_joints(self) -> int:
        return self.layout.num_joints

    @property
    def channels(self) -> int:
        return self.info.in_channels

    @property
    def frames_seen(self) -> int:
        return self._count

    def reset(self) -> None:
        self._frames.clear()
        self._count = self._since = 0

    # -- streaming -------------------------------------------------------------------------------
    def push(self, frame: Any) -> Prediction | None:
        """Add one frame ((M, V, C), (V, C), per-person joint lists or {"persons": ...})."""
        self._frames.append(as_frame(frame, self.num_joints, self.channels))
        self._count += 1
        self._since += 1
        if len(self._frames) >= self.min_frames and self._since >= self.stride:
            return self.predict_window()
        return None

    def finish(self) -> Prediction | None:
        """Predict on the window if frames arrived since the last prediction (the tail of a
        recording, or a recording shorter than ``min_frames``); else None."""
        if self._frames and self._since > 0:
            return self.predict_window()
        return None

    def window_array(self) -> np.ndarray:
        """The window as (M, T, V, C) float32 (M = most persons in any of its frames, >= 1)."""
        frames = list(self._frames)
        if not frames:
            raise ValueError("no frames pushed")
        m = max(1, max(f.shape[0] for f in frames))
        out = np.zeros((m, len(frames), self.num_joints, self.channels), np.float32)
        for t, f in enumerate(frames):
            out[:f.shape[0], t] = f
        return out

    def predict_window(self) -> Prediction:
        pred = self.predict_clip(self.window_array(), frame_index=self._count - 1)
        self._since = 0
        return pred

    # -- whole clips -----------------------------------------------------------------------------
    def preprocess(self, keypoints: np.ndarray) -> np.ndarray:
        """(M, T, V, C) raw keypoints -> the model input (num_clips, C, clip_len, V, max_persons),
        through :func:`normalize_clip` with the test loader's arguments."""
        x = np.asarray(keypoints, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[2:] != (self.num_joints, self.channels):
            raise ValueError(f"keypoints must be (M, T, {self.num_joints}, {self.channels}), got {x.shape}")
        info = self.info
        clips = [normalize_clip(x, self.layout, info.clip_len, info.max_persons, mode=info.mode,
                                crop_ratio=info.crop_ratio, num_clips=info.num_clips, clip_index=k,
                                prenormalize=info.prenormalize, coord_dims=info.coord_dims,
                                spatial_norm=info.spatial_norm)
                 for k in range(info.num_clips)]
        return np.ascontiguousarray(np.stack(clips).transpose(0, 4, 2, 3, 1))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model logits for model inputs (N, C, T, V, M)."""
        return self.session.run(None, {self.info.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def predict_clip(self, keypoints: np.ndarray, frame_index: int = -1) -> Prediction:
        """Predict on a whole recording (M, T, V, C): the test loader's clip(s), logits averaged."""
        started = time.perf_counter()
        x = self.preprocess(keypoints)
        logits = self.logits(x).mean(axis=0)
        probs = _softmax(logits.astype(np.float64))
        k = int(np.argmax(logits))
        ms = (time.perf_counter() - started) * 1e3
        self.latencies_ms.append(ms)
        return Prediction(label=self.class_names[k], score=float(probs[k]), class_index=k,
                          latency_ms=ms, frame_index=frame_index, window_frames=int(np.asarray(keypoints).shape[-3]),
                          probabilities=probs.astype(np.float32))

    def stream(self, frames: Iterable[Any]) -> Iterable[Prediction]:
        """Push every frame; yield each prediction, and the final one of :meth:`finish`."""
        for frame in frames:
            pred = self.push(frame)
            if pred is not None:
                yield pred
        last = self.finish()
        if last is not None:
            yield last

    def latency_summary(self) -> dict[str, float]:
        t = np.asarray(self.latencies_ms, dtype=np.float64)
        if not len(t):
            return {"predictions": 0}
        return {"predictions": int(len(t)), "p50_ms": float(np.median(t)),
                "p95_ms": float(np.percentile(t, 95)), "mean_ms": float(t.mean())}
