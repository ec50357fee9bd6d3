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

from last_lite.adapters import AdapterError, JointAdapter, get_adapter, layout_name
from last_lite.data.normalize import TEMPORAL_MODES, normalize_clip
from last_lite.runtime.inputs import InputError, ModelFileError, clean_frame, read_model_bytes
from last_lite.runtime.session import model_session
from last_lite.skeleton import get_layout

__all__ = ["ActionRecognizer", "AdapterError", "InputError", "ModelFileError", "ModelInfo", "Prediction", "as_frame",
           "read_model_info"]


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


_CAPS = {"clip_len": 100_000, "max_persons": 64, "in_channels": 64, "num_clips": 64, "classes": 100_000,
         "joints": 10_000}


def _meta_int(value: Any, key: str, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise ModelFileError(f"model metadata {key} must be an integer in [1, {cap}], got {value!r:.80}")
    return value


def _io_shapes(session) -> tuple[str, list[Any], list[Any]]:
    """(input name, input shape, output shape) as the model declares them."""
    try:
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        return inp.name, list(inp.shape or []), list(out.shape or [])
    except (IndexError, AttributeError, TypeError):
        raise ModelFileError("the model has no input or no output") from None


def read_model_info(session_or_meta, input_name: str | None = None) -> ModelInfo:
    """ModelInfo from an InferenceSession (or its decoded/undecoded custom metadata map). Every
    value is checked (types, ranges, and against the model's declared input and output shapes),
    so a damaged or hand-edited metadata entry is a :class:`ModelFileError`, never a huge
    allocation or a TypeError later."""
    dims: list[Any] = []
    out_dims: list[Any] | None = None  # None: no network to check (a metadata map)
    if hasattr(session_or_meta, "get_modelmeta"):
        try:
            meta = _decode(session_or_meta.get_modelmeta().custom_metadata_map)
        except (UnicodeDecodeError, RuntimeError) as exc:  # damaged metadata bytes
            raise ModelFileError(f"the model's metadata is unreadable ({type(exc).__name__})") from None
        name, dims, out_dims = _io_shapes(session_or_meta)
        input_name = input_name or name
    else:
        meta = _decode(dict(session_or_meta))
    missing = [k for k in ("class_names", "layout", "clip_len", "max_persons", "normalization")
               if k not in meta]
    if missing:
        raise ModelFileError(f"the model has no last_lite metadata ({', '.join(missing)} missing): "
                             f"export it with `python -m last_lite.export`")
    # what the recognizer feeds and reads: a batch of clips in, one row of logits per clip out
    if out_dims is not None and len(dims) != 5:
        raise ModelFileError(f"the network's input must be (batch, channels, frames, joints, persons), "
                             f"got shape {dims}")
    if out_dims is not None and len(out_dims) != 2:
        raise ModelFileError(f"the network's output must be (batch, classes), got shape {out_dims}")
    outputs = out_dims[-1] if out_dims else None
    names = meta["class_names"]
    if not isinstance(names, list) or not 1 <= len(names) <= _CAPS["classes"] \
            or not all(isinstance(n, str) and len(n) <= 1000 for n in names):
        raise ModelFileError(f"model metadata class_names must be a list of 1 to {_CAPS['classes']} "
                             f"strings, got {str(names)[:80]}")
    norm = meta["normalization"]
    if norm is None:
        norm = {}
    if not isinstance(norm, Mapping):
        raise ModelFileError(f"model metadata normalization must be a mapping, got {str(norm)[:80]}")
    clip_len = _meta_int(meta["clip_len"], "clip_len", _CAPS["clip_len"])
    max_persons = _meta_int(meta["max_persons"], "max_persons", _CAPS["max_persons"])
    in_channels = _meta_int(meta.get("in_channels", 3), "in_channels", _CAPS["in_channels"])
    coord_dims = _meta_int(norm.get("coord_dims", meta.get("coord_dims", min(in_channels, 3))),
                           "coord_dims", in_channels)
    num_clips = _meta_int(norm.get("num_clips", 1), "normalization.num_clips", _CAPS["num_clips"])
    try:
        layout = get_layout(meta["layout"])
    except Exception as exc:  # any malformed layout is the file's fault
        raise ModelFileError(f"model metadata layout is not a valid layout: {type(exc).__name__}: "
                             f"{str(exc)[:120]}") from None
    joints = _meta_int(layout.num_joints, "layout joints", _CAPS["joints"])
    # the metadata must describe the network's own input and output
    for axis, (key, value) in enumerate((("in_channels", in_channels), ("clip_len", clip_len),
                                         ("layout joints", joints), ("max_persons", max_persons)), 1):
        if len(dims) > axis and isinstance(dims[axis], int) and dims[axis] != value:
            raise ModelFileError(f"model metadata {key}={value} differs from the network's input "
                                 f"shape {dims}")
    if isinstance(outputs, int) and outputs != len(names):
        raise ModelFileError(f"model metadata lists {len(names)} class names, the network outputs {outputs}")
    pre = norm.get("prenormalize")
    if pre not in (None, "none", "3d", "2d"):
        raise ModelFileError(f"model metadata normalization.prenormalize must be none, 3d or 2d, got {pre!r:.80}")
    mode = norm.get("mode", "resize")
    if mode not in TEMPORAL_MODES:
        raise ModelFileError(f"model metadata normalization.mode must be one of {TEMPORAL_MODES}, got {mode!r:.80}")
    crop = norm.get("crop_ratio", 0.95)
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1:
        raise ModelFileError(f"model metadata normalization.crop_ratio must be in (0, 1], got {crop!r:.80}")
    spatial = norm.get("spatial_norm")
    if spatial not in (None, "none", "minmax"):
        raise ModelFileError(f"model metadata normalization.spatial_norm must be none or minmax, got {spatial!r:.80}")
    source = norm.get("source")
    return ModelInfo(
        model=str(meta.get("model", "?"))[:200], class_names=tuple(names),
        layout=meta["layout"], clip_len=clip_len, max_persons=max_persons,
        in_channels=in_channels, coord_dims=coord_dims,
        prenormalize=None if pre in (None, "none") else str(pre),
        mode=str(mode), crop_ratio=float(crop), num_clips=num_clips,
        spatial_norm=None if spatial in (None, "none") else str(spatial),
        input_name=input_name or "skeleton",
        source=None if source is None else str(source), raw=meta)


def as_frame(frame: Any, num_joints: int, channels: int, max_persons: int = _CAPS["max_persons"]) -> np.ndarray:
    """One frame as (persons, V, C) float32 (:func:`last_lite.runtime.inputs.clean_frame`):
    an array (M, V, C) or (V, C), a list of persons (each a list of V joints, each a list of C
    numbers; a ``null`` joint or person is absent = zeros; a joint with a NaN or infinite value
    too), a mapping ``{"persons": [...]}`` (the JSON-lines schema), or None / [] (nobody).
    Persons beyond ``max_persons`` are dropped. Raises :class:`InputError` for anything else."""
    return clean_frame(frame, num_joints, channels, max_persons)


def _finite_joints(x: np.ndarray) -> np.ndarray:
    """float64 copy with non-finite joints zeroed (absent) before an adapter mixes joints."""
    x = np.array(x, dtype=np.float64)
    bad = ~np.isfinite(x).all(axis=-1)
    x[bad] = 0.0
    return x


def _frames_setting(name: str, value: Any, most: int | None = None, most_is: str = "") -> int:
    """``value`` as a whole number of frames, at least 1 and at most ``most`` (None: no bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number of frames, got {value!r}")
    if value < 1 or (most is not None and value > most):
        bound = "at least 1" if most is None else f"between 1 and {most}{most_is}"
        raise ValueError(f"{name} must be {bound} frames, got {value}")
    return int(value)


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
    ``input_layout`` (e.g. ``"ntu25"``, ``"mediapipe33"``): the layout of the frames given, adapted
    to the model's (:mod:`last_lite.adapters`); None: the model's own layout.
    """

    def __init__(self, model_path: str | Path, window: int | None = None, stride: int | None = None,
                 min_frames: int | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, input_layout: Any = None) -> None:
        self.model_path = Path(model_path)
        # the bytes are read once, bounded and hash-checked, and handed to ONNX Runtime (.onnx,
        # .ort) or LiteRT (.tflite) as such
        data, self.integrity_checked = read_model_bytes(self.model_path)
        try:
            self.session = model_session(data, threads=threads, providers=providers, quiet=True)
        except ImportError:  # a .tflite without ai-edge-litert: the file is fine, the message says what to install
            raise
        except Exception as exc:  # ORT's own types (InvalidProtobuf, Fail, ...): name the file
            raise ModelFileError(f"{self.model_path} is not a loadable ONNX, ORT or TFLite model "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        del data
        try:
            self.info = read_model_info(self.session)
        except ModelFileError as exc:
            raise ModelFileError(f"{self.model_path}: {exc}") from None
        if self.integrity_checked is None and "integrity" in self.info.raw:
            raise ModelFileError(f"{self.model_path} is damaged: its integrity field is unreadable")
        self.layout = get_layout(self.info.layout)
        # None is the default; 0 is a value, refused below (never silently the default)
        self.window = _frames_setting("window", self.info.clip_len if window is None else window,
                                      100 * max(self.info.clip_len, 100))
        self.stride = _frames_setting("stride", max(1, self.info.clip_len // 8) if stride is None else stride)
        self.min_frames = _frames_setting("min_frames", self.window if min_frames is None else min_frames,
                                          self.window, " (the window)")
        self._frames: deque[np.ndarray] = deque(maxlen=self.window)
        self._count = 0
        self._since = 0
        self.latencies_ms: list[float] = []
        self.adapter: JointAdapter | None = None
        self.set_input_layout(input_layout)

    def set_input_layout(self, layout: Any) -> None:
        """Frames (and clips) given from now on are in ``layout`` (None: the model's); raises
        :class:`~last_lite.adapters.AdapterError` naming both layouts where no adapter exists."""
        self.adapter = None if layout is None else get_adapter(layout, self.info.layout)
        self.input_layout = self.info.layout if self.adapter is None else self.adapter.source

    def _layout_hint(self, joints: int) -> str:
        from last_lite.adapters import layout_from_joint_count

        guess = layout_from_joint_count(joints)
        model = layout_name(self.info.layout) if isinstance(self.info.layout, str) else "custom"
        return (f"the model reads {model} ({self.num_joints} joints)"
                + (f"; for {guess} input give input_layout={guess!r} (--layout {guess})" if guess else ""))

    # -- facts ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def num_joints(self) -> int:
        return self.layout.num_joints

    @property
    def input_joints(self) -> int:
        """Joints per frame in the input layout (the model's unless an adapter is set)."""
        return self.num_joints if self.adapter is None else self.adapter.source_joints

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
        if isinstance(frame, np.ndarray) and frame.ndim in (2, 3) and frame.shape[-2] != self.input_joints:
            raise InputError(f"a frame has {frame.shape[-2]} joints, expected {self.input_joints}: "
                             + self._layout_hint(frame.shape[-2]))
        frame = clean_frame(frame, self.input_joints, self.channels, self.info.max_persons)
        if self.adapter is not None:
            frame = self.adapter.apply(frame)
        self._frames.append(frame)
        self._count += 1
        self._since += 1
        if len(self._frames) >= self.min_frames and self._since >= self.stride:
            return self.predict_window()
        return None

    def finish(self) -> Prediction | None:
        """Predict on the window if frames arrived since the last prediction (the tail of a
        recording, or a recording shorter than ``min_frames``); else None (also when the window
        holds no joint, see :meth:`predict_window`)."""
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

    def predict_window(self) -> Prediction | None:
        """Predict on the window; None when it holds no joint (nobody in view, or every joint
        absent: zero, NaN or infinite), where the model would still name a class, confidently."""
        window = self.window_array()
        self._since = 0
        if not window.any():
            return None
        return self.predict_clip(window, frame_index=self._count - 1)

    # -- whole clips -----------------------------------------------------------------------------
    def preprocess(self, keypoints: np.ndarray) -> np.ndarray:
        """(M, T, V, C) raw keypoints -> the model input (num_clips, C, clip_len, V, max_persons),
        through :func:`normalize_clip` with the test loader's arguments."""
        x = np.asarray(keypoints)
        if x.dtype.kind not in "biuf":
            raise InputError(f"keypoints must be numeric, got dtype {x.dtype}")
        if x.ndim == 3:
            x = x[None]
        if self.adapter is not None and x.ndim == 4 and x.shape[2] == self.adapter.source_joints \
                and x.shape[2] != self.num_joints:
            x = self.adapter.apply(_finite_joints(x))  # a whole recording in the input layout
        if x.ndim != 4 or x.shape[2:] != (self.num_joints, self.channels) or x.shape[1] < 1:
            raise InputError(f"keypoints must be (M, T, {self.num_joints}, {self.channels}) with T >= 1, "
                             f"got {x.shape}" + (f" ({self._layout_hint(x.shape[2])})" if x.ndim == 4 else ""))
        # the persons the model uses; NaN/inf joints absent (zeros), absurd coordinates refused
        x = np.stack([clean_frame(x[:, t], self.num_joints, self.channels, self.info.max_persons)
                      for t in range(x.shape[1])], axis=1)
        if not x.any():  # the model would still name a class, confidently
            raise InputError(f"no joint present in the {x.shape[1]} frames (every joint absent: zero, NaN or "
                             f"infinite, or no person): nothing to recognise")
        info = self.info
        clips = [normalize_clip(x, self.layout, info.clip_len, info.max_persons, mode=info.mode,
                                crop_ratio=info.crop_ratio, num_clips=info.num_clips, clip_index=k,
                                prenormalize=info.prenormalize, coord_dims=info.coord_dims,
                                spatial_norm=info.spatial_norm)
                 for k in range(info.num_clips)]
        return np.ascontiguousarray(np.stack(clips).transpose(0, 4, 2, 3, 1))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model logits (N, classes) for model inputs (N, C, T, V, M)."""
        batch = np.ascontiguousarray(batch, np.float32)
        want = (self.channels, self.info.clip_len, self.num_joints, self.info.max_persons)
        if batch.ndim != 5 or batch.shape[1:] != want:  # the caller's mistake, not the file's
            raise InputError(f"model inputs must be (N, {', '.join(map(str, want))}), got {batch.shape}")
        try:
            out = np.asarray(self.session.run(None, {self.info.input_name: batch})[0])
        except Exception as exc:  # ORT's own types (RuntimeException, Fail, ...): the file's fault
            raise ModelFileError(f"{self.model_path} failed to run on a {batch.shape} input "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if out.shape != (len(batch), len(self.class_names)):
            raise ModelFileError(f"{self.model_path} output shape {out.shape} for {len(batch)} clips, expected "
                                 f"({len(batch)}, {len(self.class_names)}): one logit per class")
        return out

    def predict_clip(self, keypoints: np.ndarray, frame_index: int = -1) -> Prediction:
        """Predict on a whole recording (M, T, V, C): the test loader's clip(s), logits averaged."""
        started = time.perf_counter()
        x = self.preprocess(keypoints)
        logits = self.logits(x).mean(axis=0)
        if not np.isfinite(logits).all():
            raise InputError("the model's output is not finite for this input (coordinates far "
                             "outside what it was trained on?)")
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
