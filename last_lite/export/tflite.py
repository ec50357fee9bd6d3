"""PyTorch -> TFLite (LiteRT) through ``litert-torch``: FP32, and full-integer INT8 (int8 input,
output and kernels; what Coral's Edge TPU and NNAPI need) from PT2E static quantization
calibrated on real training clips. The last_lite metadata goes inside the file (TFLite model
metadata ``last_lite``, read by :mod:`last_lite.runtime.tflite`), with the file's own SHA-256.

Needs ``pip install -e '.[tflite]'`` (litert-torch, ai-edge-litert).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from last_lite.runtime.tflite import METADATA_NAME

INSTALL = "pip install -e '.[tflite]'"
MODULES = ("litert_torch", "ai_edge_litert")


def missing_modules(modules: Iterable[str] = MODULES) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def add_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """``data`` (a .tflite flatbuffer) with a ``last_lite`` metadata entry holding ``metadata``
    (key -> JSON string, as ONNX metadata_props) as one JSON object; an earlier entry is replaced."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    if any(getattr(b, "offset", 0) > 1 for b in model.buffers or []):
        raise ValueError("this .tflite file stores buffers outside the flatbuffer; cannot add metadata")
    payload = json.dumps({k: json.loads(v) for k, v in metadata.items()}, separators=(",", ":"),
                         ensure_ascii=False).encode("utf-8")
    buf = schema.BufferT()
    buf.data = np.frombuffer(payload, np.uint8).copy()
    model.buffers = list(model.buffers or []) + [buf]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _sample(model, clip_len: int, max_persons: int):
    import torch

    return torch.zeros(1, int(getattr(model, "in_channels", 3)), int(clip_len),
                       int(model.layout.num_joints), int(max_persons))


def _quiet():
    """litert-torch prints progress lines per stage; keep the export's console readable."""
    import contextlib
    import io

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def convert_fp32(model, clip_len: int, max_persons: int) -> bytes:
    import litert_torch
    import torch

    x = _sample(model, clip_len, max_persons)
    with torch.no_grad(), _quiet():
        edge = litert_torch.convert(model.eval(), (x,))
    return bytes(edge.model_content())


def convert_int8(model, clip_len: int, max_persons: int, calibration: Iterable[np.ndarray],
                 per_channel: bool = True) -> tuple[bytes, dict[str, Any]]:
    """Full-integer INT8 (PT2E static, symmetric int8 weights per channel, int8 activations
    observed by histogram on ``calibration`` clips (N, C, T, V, M), fed one clip at a time)."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    x = _sample(model, clip_len, max_persons)
    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=per_channel))
    seen = 0
    with torch.no_grad():
        graph = torch.export.export(model.eval(), (x,)).module()
        graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for batch in calibration:
            for clip in np.asarray(batch, np.float32).reshape(-1, *x.shape[1:]):
                graph(torch.from_numpy(np.ascontiguousarray(clip[None])))
                seen += 1
        if not seen:
            raise ValueError("no calibration clips for the TFLite INT8 model")
        graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    with _quiet():
        edge = litert_torch.convert(graph, (x,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content()), {"calibration_samples": seen, "per_channel": bool(per_channel),
                                        "scheme": "PT2E static: int8 symmetric weights, int8 "
                                                  "activations (histogram observer), int8 input/output"}


def write_tflite(data: bytes, path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``data`` with the metadata and its SHA-256 (``integrity``) atomically to ``path``."""
    from last_lite.io import atomic_write
    from last_lite.runtime.integrity import KEY, PLACEHOLDER, stamp

    full = add_metadata(data, {**metadata, KEY: json.dumps(PLACEHOLDER)})

    def write(tmp: Path) -> None:
        tmp.write_bytes(full)
        stamp(tmp)

    atomic_write(Path(path), write)
