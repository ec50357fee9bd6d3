"""A ``.tflite`` model run through LiteRT (``ai-edge-litert``) behind the ONNX Runtime session's
interface (numpy + ai-edge-litert only; never torch).

:class:`TFLiteSession` offers what the runtime and the export's evaluation use of an
``onnxruntime.InferenceSession``: ``get_inputs()`` / ``get_outputs()`` (name, shape),
``run(None, {name: x})`` for a batch of any size (the file has a fixed batch of one: the clips
run one after another), and ``get_modelmeta().custom_metadata_map``. A full-integer model
(int8 input and output, for Coral and NNAPI) gets its input quantized and its output dequantized
with the file's own scales, so callers always pass and receive float32.

The last_lite metadata (the same keys and JSON values as the ONNX ``metadata_props``, the
``integrity`` field included) is stored inside the file, as TFLite model metadata named
:data:`METADATA_NAME` whose buffer is a JSON object (:func:`read_tflite_metadata`; the export's
``last_lite.export.tflite.add_metadata`` writes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["INSTALL_HINT", "METADATA_NAME", "TFLiteSession", "is_tflite", "read_tflite_metadata"]

METADATA_NAME = "last_lite"
INSTALL_HINT = "pip install ai-edge-litert  (or, with the exporter, pip install -e '.[tflite]')"
_IDENTIFIER = b"TFL3"


def is_tflite(data: bytes) -> bool:
    """True for the bytes of a TFLite flatbuffer (file identifier ``TFL3`` at offset 4)."""
    return len(data) >= 8 and data[4:8] == _IDENTIFIER


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(f"running a .tflite model needs ai-edge-litert: {INSTALL_HINT}") from None
    return schema


def read_tflite_metadata(data: bytes) -> dict[str, str]:
    """The last_lite metadata map (key -> JSON string) stored in a ``.tflite`` file's bytes
    ({} when the file carries none)."""
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode("utf-8", "replace") != METADATA_NAME:
            continue
        buf = model.Buffers(entry.Buffer())
        raw = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
        if raw is None or isinstance(raw, int):
            if buf is not None and buf.Offset() > 1:  # stored after the flatbuffer
                raw = np.frombuffer(data, np.uint8, int(buf.Size()), int(buf.Offset()))
            else:
                return {}
        decoded = json.loads(bytes(raw).decode("utf-8"))
        if not isinstance(decoded, dict):
            raise ValueError("the last_lite metadata of this .tflite file is not a JSON object")
        return {str(k): json.dumps(v) for k, v in decoded.items()}
    return {}


@dataclass(frozen=True)
class _Arg:
    name: str
    shape: list
    type: str = "tensor(float)"


class TFLiteSession:
    """A LiteRT interpreter with the ONNX Runtime session calls the runtime uses (see the module)."""

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - depends on the install
            raise ImportError(f"running a .tflite model needs ai-edge-litert: {INSTALL_HINT}") from None
        self._data = bytes(data)
        self.metadata = read_tflite_metadata(self._data)
        self.interpreter = Interpreter(model_content=self._data, num_threads=int(threads) if threads else None)
        self.interpreter.allocate_tensors()
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"expected one input and one output, the model has {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0], outs[0]
        name = _meta_json(self.metadata.get("input"), {}).get("name", "skeleton")
        out_name = _meta_json(self.metadata.get("input"), {}).get("output", "logits")
        self._inputs = [_Arg(str(name), ["batch", *[int(d) for d in self._in["shape"][1:]]])]
        self._outputs = [_Arg(str(out_name), ["batch", *[int(d) for d in self._out["shape"][1:]]])]
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])

    # -- the InferenceSession calls ----------------------------------------------------------------
    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def get_modelmeta(self) -> SimpleNamespace:
        return SimpleNamespace(custom_metadata_map=dict(self.metadata), producer_name="last_lite")

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if len(feed) != 1:
            raise ValueError("a TFLite model takes one input")
        x = np.asarray(next(iter(feed.values())), dtype=np.float32)
        want = tuple(int(d) for d in self._in["shape"][1:])
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(f"input must be (batch, {', '.join(map(str, want))}), got {x.shape}")
        return [np.stack([self._one(x[i:i + 1]) for i in range(len(x))]) if len(x)
                else np.zeros((0, *self._outputs[0].shape[1:]), np.float32)]

    # -- one clip ------------------------------------------------------------------------------------
    def _one(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if self.input_dtype != np.float32:  # full-integer model: quantize with the file's scale
            scale, zero = self._in["quantization"]
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.input_dtype)
        it.set_tensor(self._in["index"], np.ascontiguousarray(x))
        it.invoke()
        y = it.get_tensor(self._out["index"])[0]
        if self.output_dtype != np.float32:
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, dtype=np.float32)

    def ops(self) -> dict[str, int]:
        """Operator counts of the interpreter's execution plan (DELEGATE: XNNPACK partitions)."""
        counts: dict[str, int] = {}
        for op in self.interpreter._get_ops_details():
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _meta_json(value: Any, default: Any) -> Any:
    try:
        out = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return default
    return out if isinstance(out, dict) else default
