"""The ONNX Runtime session and batched multi-clip logits, once (numpy + onnxruntime only).

Used by the edge runtime (:mod:`last_lite.runtime.recognizer`) and by export (parity, evaluation,
INT8 op counts, TensorRT comparisons), so every place that runs an exported model runs it alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")


def ort_session(path: str | Path | bytes, threads: int | None = None, optimization: str = "all",
                providers: Sequence[str] | None = None, optimized_path: str | Path | None = None,
                quiet: bool = False):
    """An InferenceSession of a file (or the model's bytes) (CPU unless ``providers``); ``threads`` sets intra-op threads (None:
    ORT's default) with one inter-op thread; ``optimized_path`` saves ORT's optimised graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if quiet:
        opts.log_severity_level = 3
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = dict(zip(OPTIMIZATION_LEVELS, (
        level.ORT_DISABLE_ALL, level.ORT_ENABLE_BASIC, level.ORT_ENABLE_EXTENDED,
        level.ORT_ENABLE_ALL)))[optimization]
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    model = bytes(path) if isinstance(path, (bytes, bytearray)) else str(path)
    return ort.InferenceSession(model, sess_options=opts,
                                providers=list(providers or ["CPUExecutionProvider"]))


def clip_logits(run_batch: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                batch_size: int = 64) -> np.ndarray:
    """Logits of ``x`` (N, C, T, V, M), run ``batch_size`` clips at a time; for ``x`` of shape
    (N, k, C, T, V, M) (k temporal crops of each sample) the k logits are averaged."""
    x = np.asarray(x, dtype=np.float32)
    clips = None
    if x.ndim == 6:
        n, clips = x.shape[:2]
        x = x.reshape(n * clips, *x.shape[2:])
    if not len(x):
        return np.zeros((0, 0), np.float32)
    out = np.concatenate([run_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    if clips is not None:
        out = out.reshape(-1, clips, out.shape[-1]).mean(axis=1)
    return out


def session_logits(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """:func:`clip_logits` through an InferenceSession's first input and output."""
    name = session.get_inputs()[0].name
    return clip_logits(lambda batch: session.run(None, {name: batch})[0], x, batch_size)


def model_session(data: bytes, threads: int | None = None, providers: Sequence[str] | None = None,
                  quiet: bool = False):
    """The session for a model file's bytes: LiteRT for a ``.tflite`` flatbuffer
    (:class:`last_lite.runtime.tflite.TFLiteSession`, needs ai-edge-litert), ONNX Runtime for
    ``.onnx`` and ``.ort`` files; both answer the same calls."""
    from last_lite.runtime.tflite import TFLiteSession, is_tflite

    if is_tflite(data):
        return TFLiteSession(data, threads)
    return ort_session(data, threads=threads, providers=providers, quiet=quiet)
