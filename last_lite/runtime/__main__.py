"""``python -m last_lite.runtime --model model.onnx --input <rec.skeleton | rec.npy | frames.jsonl | ->``

Streams a recording frame by frame through :class:`~last_lite.runtime.recognizer.ActionRecognizer`
and prints each prediction, then the p50 / p95 latency. numpy + onnxruntime only.

Inputs:

- ``.skeleton``: an NTU RGB+D file; parsed and denoised (at most two actors) as the NTU
  preprocessing does (``--no-denoise`` keeps the bodies as listed per frame);
- ``.npy``: keypoints (T, V, C) or (M, T, V, C);
- ``.json`` holding one document ``{"skeletons": [T][V][C]}``: an NW-UCLA ``all_sqe`` clip;
- anything else (``.jsonl``, ``.json``...) or ``-`` (stdin): JSON lines, one frame per line,
  ``{"persons": [[[x, y, z], ...V joints], ...persons]}`` (a bare list of persons works too;
  ``null`` marks an absent joint or person). See docs/runtime.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from last_lite.adapters import AdapterError, layout_from_joint_count
from last_lite.runtime.inputs import (InputError, ModelFileError, frames_from_json_lines, read_npy_recording,
                                      read_npy_shape, read_skeletons_document)
from last_lite.runtime.recognizer import ActionRecognizer


def frames_from_array(keypoints: np.ndarray) -> Iterator[np.ndarray]:
    """(M, T, V, C) or (T, V, C) -> frames (M, V, C)."""
    x = np.asarray(keypoints, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"keypoints must be (T, V, C) or (M, T, V, C), got shape {x.shape}")
    for t in range(x.shape[1]):
        yield x[:, t]


def read_ntu_skeleton(path: str | Path, denoise: bool = True) -> np.ndarray:
    """An NTU ``.skeleton`` file as (M, T, 25, 3) float32, denoised like ``last_lite.prepare``."""
    from last_lite.data import ntu_skeleton as ntu

    sk = ntu.read_skeleton(path)
    if denoise:
        res = ntu.denoise(sk)
        if res is None:
            return np.zeros((1, 0, 25, 3), np.float32)
        return np.asarray(res.keypoints, dtype=np.float32)
    body = np.asarray(sk["skel_body"], dtype=np.float32)
    return body if body.shape[0] else np.zeros((1, body.shape[1], 25, 3), np.float32)


def _report(n: int, reason: str) -> None:
    print(f"last_lite.runtime: line {n} skipped: {reason}", file=sys.stderr, flush=True)


def load_recording(source: str, rec: ActionRecognizer, denoise: bool = True,
                   report=_report) -> tuple[Iterable[Any], np.ndarray | None]:
    """(frames, whole recording (M, T, V, C) when the input is a file of known length). Every
    reader is bounded by the model (:mod:`last_lite.runtime.inputs`); a bad JSON line is reported
    and skipped; a bad file is an InputError naming it."""
    joints, channels, persons = rec.input_joints, rec.channels, rec.info.max_persons
    if source == "-":
        return frames_from_json_lines(sys.stdin.buffer, joints, channels, persons, report), None
    path = Path(source)
    if not path.exists():
        raise InputError(f"no such input file: {path}")
    if path.is_dir():
        raise InputError(f"input {path} is a folder, not a file")
    if path.suffix == ".skeleton":
        from last_lite.data.ntu_skeleton import SkeletonFormatError

        if not path.is_file():
            raise InputError(f"input {path} is not a regular file")
        if (joints, channels) != (25, 3):
            raise InputError(f"{path}: an NTU .skeleton holds 25 joints of 3 values, the model "
                             f"expects {joints} of {channels}")
        try:
            x = read_ntu_skeleton(path, denoise)
        except (SkeletonFormatError, OSError) as exc:
            raise InputError(f"{path}: {exc}") from None
        x = np.asarray(x[:persons])
        return frames_from_array(x), x
    if path.suffix == ".npy":
        x = read_npy_recording(path, joints, channels, persons)
        return frames_from_array(x), x
    if not path.is_file():
        raise InputError(f"input {path} is not a regular file")
    x = read_skeletons_document(path, joints, channels) if path.suffix == ".json" else None
    if x is not None:
        return frames_from_array(x), x
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise InputError(f"input {path} cannot be read: {exc.strerror or exc}") from None
    return frames_from_json_lines(stream, joints, channels, persons, report), None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m last_lite.runtime",
                                description="Stream a skeleton recording through an exported model.")
    p.add_argument("--model", required=True,
                   help="an .onnx, .ort or .tflite model written by last_lite.export, or zoo:<name>[:onnx_fp32] for a "
                        "shipped one (INT8 by default), e.g. zoo:nw_ucla/last_lite_small")
    p.add_argument("--input", required=True,
                   help="a .skeleton (NTU), .npy ((T,V,C) or (M,T,V,C)), .json (NW-UCLA: {\"skeletons\": [T][V][C]}) "
                        "or JSON-lines file, or - (stdin)")
    p.add_argument("--window", type=int, default=None, help="frames of history (default: clip length)")
    p.add_argument("--stride", type=int, default=None, help="predict every N frames (default: clip/8)")
    p.add_argument("--min-frames", type=int, default=None,
                   help="frames needed before the first prediction (default: a full window)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--whole", action="store_true",
                   help="also predict once on the whole recording (the test loader's clip)")
    p.add_argument("--top", type=int, default=1, help="print the top-k classes")
    p.add_argument("--json", action="store_true", help="print predictions as JSON lines")
    p.add_argument("--no-denoise", action="store_true", help=".skeleton: keep bodies as listed")
    p.add_argument("--layout", default=None,
                   help="the input's skeleton layout (ntu25, ucla20, mediapipe33, coco17, openpose18), "
                        "adapted to the model's; default: ntu25 for .skeleton, from a .npy's or .json's joint count "
                        "where one layout has it, else the model's")
    return p.parse_args(argv)


def input_layout(source: str, rec: ActionRecognizer, given: str | None = None) -> str | None:
    """The input's layout: ``given``, else ntu25 for an NTU ``.skeleton``, else the built-in layout
    with a ``.npy``'s (or a JSON ``skeletons`` document's) joint count (when it differs from the
    model's), else None (the model's)."""
    if given:
        return given
    path = Path(source)
    if source != "-" and path.suffix == ".skeleton":
        return "ntu25"
    shape = None
    if source != "-" and path.suffix == ".npy" and path.is_file():
        shape = read_npy_shape(path)
    elif source != "-" and path.suffix == ".json" and path.is_file():
        document = read_skeletons_document(path)
        shape = None if document is None else document.shape
    if shape is not None:
        joints = shape[-2] if len(shape) in (3, 4) else rec.num_joints
        if joints != rec.num_joints:
            guess = layout_from_joint_count(joints)
            if guess is None:
                raise InputError(f"{path}: {joints} joints, the model reads {rec.num_joints}; no known "
                                 f"layout has {joints} joints")
            return guess
    return None


def resolve_model(spec: str) -> str:
    """``zoo:<name>[:<kind>]`` -> the shipped file (hash-checked); anything else is a path."""
    if not spec.startswith("zoo:"):
        return spec
    from last_lite.zoo import zoo_onnx

    name, _, kind = spec[len("zoo:"):].partition(":")
    try:
        return str(zoo_onnx(name, kind or "onnx_int8"))
    except KeyError as exc:  # an unknown name or kind: the message lists the known ones
        raise ModelFileError(str(exc.args[0]) if exc.args else str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"zoo model {name!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rec = ActionRecognizer(resolve_model(args.model), window=args.window, stride=args.stride,
                           min_frames=args.min_frames, threads=args.threads)
    info = rec.info
    rec.set_input_layout(input_layout(args.input, rec, args.layout))
    frames, whole = load_recording(args.input, rec, denoise=not args.no_denoise)
    if not args.json:
        print(f"model {info.model}: {len(info.class_names)} classes, layout "
              f"{info.layout if isinstance(info.layout, str) else 'custom'}, clip {info.clip_len}, "
              f"window {rec.window}, stride {rec.stride}, normalisation {info.prenormalize or 'none'}"
              + (f"; input {rec.adapter.source} adapted to {rec.adapter.target}" if rec.adapter else ""))
    for pred in rec.stream(frames):
        if args.json:
            print(json.dumps({"type": "window", **pred.as_dict(),
                              "top": pred.top(args.top, info.class_names)}), flush=True)
        else:
            tops = ", ".join(f"{name} {score:.2f}" for name, score in pred.top(args.top, info.class_names))
            print(f"frame {pred.frame_index:6d}: {pred.label:<28s} {pred.score:.3f}  "
                  f"({pred.latency_ms:.2f} ms){'  [' + tops + ']' if args.top > 1 else ''}", flush=True)
    summary = rec.latency_summary()
    if args.whole and whole is not None and whole.shape[1] > 0:
        pred = rec.predict_clip(whole)
        if args.json:
            print(json.dumps({"type": "whole", **pred.as_dict(), "top": pred.top(args.top, info.class_names)}))
        else:
            print(f"whole recording ({whole.shape[1]} frames): {pred.label} {pred.score:.3f} "
                  f"({pred.latency_ms:.2f} ms)")
    summary["frames"] = rec.frames_seen
    if args.json:
        print(json.dumps({"type": "summary", **summary}))
    elif summary.get("predictions"):
        made = summary["predictions"]
        print(f"{summary['frames']} frames, {made} prediction{'' if made == 1 else 's'}; latency p50 "
              f"{summary['p50_ms']:.2f} ms, p95 {summary['p95_ms']:.2f} ms")
    else:
        print(f"{summary['frames']} frames, no prediction")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """:func:`main` with every refusal (model file, input, zoo name) as one line on stderr and
    exit status 2, never a traceback."""
    try:
        return main(argv)
    except (InputError, ModelFileError, AdapterError, FileNotFoundError) as exc:
        print(f"last_lite.runtime: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a .tflite without ai-edge-litert: the message says what to install
        print(f"last_lite.runtime: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. --window 0
        print(f"last_lite.runtime: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`
        return 0


if __name__ == "__main__":
    sys.exit(cli())
