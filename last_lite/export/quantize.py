"""INT8 static quantization with ONNX Runtime (QDQ format, per-channel weights).

The calibration data are real TRAINING samples through the test-time clip
(``SkeletonDataModule.calibration_dataloader``). The FP32 model first goes through
``quant_pre_process`` (symbolic shape inference + ORT's basic graph optimisation), then
``quantize_static``.

Which operators run in INT8 is a measured choice (docs/runtime.md has the numbers). On x86, ORT
fuses ``DequantizeLinear -> op -> QuantizeLinear`` groups into integer kernels (``QLinearConv``
on VNNI, ``QLinearAdd``, ``QLinearMul``, ``QGemm``, ...). Measured on last_lite_small (batch 1,
one thread, CPU time): quantizing only Conv/Gemm is no faster than FP32 (every float op between
two convolutions pays a DQ + Q pass); quantizing every operator type is; quantizing the graph
MatMul as well makes it much slower (``QLinearMatMul`` on a K = V = 25 product is far slower than
the float GEMM). So the default quantizes all operator types except ``MatMul``
(``keep_float_ops``): the graph products stay plain float MatMuls. ``MatMulConstBOnly`` does
not help here: ORT's QDQ quantizer ignores it. The FP32 graph that gets quantized is exported
with HardSwish decomposed (``prepare_for_export(int8_friendly=True)``), which turns the float
HardSwish islands into integer Add/Mul.
"""

from __future__ import annotations

import contextlib
import io

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from last_lite.io import atomic_write
from last_lite.runtime.integrity import KEY as INTEGRITY_KEY
from last_lite.runtime.integrity import PLACEHOLDER as INTEGRITY_PLACEHOLDER
from last_lite.runtime.integrity import stamp as stamp_integrity

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")
# The defaults; see the module docstring. op_types None = every type ORT can quantize.
DEFAULT_OP_TYPES: tuple[str, ...] | None = None
DEFAULT_KEEP_FLOAT_OPS = ("MatMul",)
DEFAULT_EXTRA_OPTIONS: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}


def calibration_batches(loader: Iterable, limit: int | None = None) -> list[np.ndarray]:
    """Batches of a (calibration) DataLoader as float32 numpy arrays (labels dropped)."""
    out, seen = [], 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
        if x.ndim == 6:  # (N, k, C, T, V, M): multi-clip
            x = x.reshape(-1, *x.shape[2:])
        if limit is not None:
            x = x[:max(limit - seen, 0)]
        if len(x):
            out.append(x)
            seen += len(x)
        if limit is not None and seen >= limit:
            break
    return out


class ArrayCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over in-memory batches, one sample per
    ``get_next`` (batch 1 keeps the calibration graph's memory flat)."""

    def __init__(self, batches: Sequence[np.ndarray], input_name: str = "skeleton",
                 batch_size: int = 1) -> None:
        self.samples = np.concatenate([np.asarray(b, dtype=np.float32) for b in batches]) \
            if len(batches) else np.zeros((0,), np.float32)
        self.input_name, self.batch_size = input_name, int(batch_size)
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def __len__(self) -> int:
        return len(self.samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self.set_range(0, len(self.samples))

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only samples[start_index:end_index] (ORT calibrates chunk by chunk with it)."""
        bs = self.batch_size
        self._iter = iter([{self.input_name: self.samples[i:min(i + bs, end_index)]}
                           for i in range(start_index, end_index, bs)])


def calibration_chunk(total: int, most: int) -> int:
    """The largest chunk size <= ``most`` that divides ``total`` (ORT requires a divisor)."""
    return max(d for d in range(1, max(min(most, total), 1) + 1) if total % d == 0)


def _enum(name: str, enum_cls):
    try:
        return getattr(enum_cls, name)
    except AttributeError:
        raise ValueError(f"unknown {enum_cls.__name__} {name!r}; expected one of "
                         f"{[m for m in dir(enum_cls) if not m.startswith('_')]}") from None


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray], *,
                  method: str = "MinMax", per_channel: bool = True,
                  op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
                  keep_float_ops: Sequence[str] | None = DEFAULT_KEEP_FLOAT_OPS,
                  extra_options: Mapping[str, Any] | None = None,
                  activation_type: str = "QUInt8", weight_type: str = "QInt8",
                  reduce_range: bool = False, nodes_to_exclude: Sequence[str] | None = None,
                  percentile: float = 99.999, num_bins: int | None = None,
                  preprocess: bool = True, short_names: bool = True, chunk_samples: int = 32,
                  work_dir: str | Path | None = None) -> dict[str, Any]:
    """Quantize ``fp32_path`` to a QDQ INT8 model at ``out_path`` (written atomically).

    ``calibration``: float32 batches (N, C, T, V, M). ``method``: MinMax | Percentile | Entropy.
    ``op_types``: operator types to quantize (None: all); ``keep_float_ops``: operator types
    whose nodes are excluded (kept in float) whatever ``op_types`` says.
    Returns the settings and facts for the report (calibration count, op counts, ...).
    ``short_names``: rename tensors and drop node names in the written file (see the module doc).
    ``chunk_samples``: calibrate this many samples at a time. ORT keeps every intermediate output
    of a chunk in memory (the histogram methods for the whole set otherwise: 18 GB for
    last_e_v3_base on 256 NW-UCLA clips); min/max and histograms are merged across chunks.
    The FP32 model's metadata_props are carried over.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from last_lite.export.onnx import INPUT_NAME, op_counts, set_metadata

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    work = Path(work_dir) if work_dir is not None else out_path.parent
    work.mkdir(parents=True, exist_ok=True)
    reader = ArrayCalibrationReader(calibration, input_name=INPUT_NAME)
    if len(reader) == 0:
        raise ValueError("no calibration samples")
    extra = dict(DEFAULT_EXTRA_OPTIONS)
    extra.update(dict(extra_options or {}))
    if method == "Percentile":
        extra.setdefault("CalibPercentile", float(percentile))
    if method in ("Percentile", "Entropy") and num_bins:
        extra.setdefault("CalibNumBins", int(num_bins))
    # Named for MinMax, but quantize_static feeds every calibrator chunk by chunk with it.
    extra.setdefault("CalibStridedMinMax", calibration_chunk(len(reader), int(chunk_samples)))
    source = onnx.load(str(fp32_path))

    prep = work / f".{out_path.stem}.prep.onnx"
    try:
        if preprocess:
            quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=False)
        else:
            onnx.save(source, str(prep))
        keep = set(keep_float_ops or ())
        exclude = list(nodes_to_exclude or [])
        exclude += [n.name for n in onnx.load(str(prep)).graph.node
                    if n.op_type in keep and n.name and n.name not in exclude]

        def write(tmp: Path) -> None:
            raw = tmp.with_name(tmp.name + ".raw.onnx")
            try:
                # ORT's calibrators print a line per chunk ("Collecting tensor data and making
                # histogram ...", bin counts): kept off the console, the report has the settings
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_static(str(prep), str(raw), reader, quant_format=QuantFormat.QDQ,
                                    op_types_to_quantize=list(op_types) if op_types else None,
                                    per_channel=bool(per_channel), reduce_range=bool(reduce_range),
                                    activation_type=_enum(activation_type, QuantType),
                                    weight_type=_enum(weight_type, QuantType),
                                    nodes_to_exclude=exclude or None,
                                    calibrate_method=_enum(method, CalibrationMethod),
                                    extra_options=extra)
                model = onnx.load(str(raw))
            finally:
                raw.unlink(missing_ok=True)
            set_metadata(model, {p.key: p.value for p in source.metadata_props})
            set_metadata(model, {INTEGRITY_KEY: json.dumps(INTEGRITY_PLACEHOLDER)})
            compact_model(model, short_names=short_names)
            model.producer_name = "last_lite"
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
            stamp_integrity(tmp)  # this file's own SHA-256 (not the FP32 file's)

        atomic_write(out_path, write)
    finally:
        prep.unlink(missing_ok=True)
        # quantize_static's calibration leaves augmented models in a temp dir it cleans itself.
    counts = op_counts(out_path)
    return {"method": method, "calibration_samples": len(reader), "per_channel": bool(per_channel),
            "format": "QDQ", "activation_type": activation_type, "weight_type": weight_type,
            "op_types": list(op_types) if op_types else None,
            "keep_float_ops": sorted(keep_float_ops or ()), "nodes_kept_float": len(exclude),
            "extra_options": extra,
            "reduce_range": bool(reduce_range), "preprocess": bool(preprocess),
            "short_names": bool(short_names),
            "op_counts": counts}


def compact_model(model, short_names: bool = True) -> None:
    """Shrink ``model`` in place without changing what it computes: identical initializers are
    stored once, ``value_info`` shape annotations are dropped, and with ``short_names`` every
    internal tensor gets a short hex name and nodes lose their names (graph inputs and outputs
    keep theirs). Only for graphs without subgraphs (ours have none)."""
    from onnx import numpy_helper

    graph = model.graph
    first_of: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    kept = []
    for tensor in graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
        if key in first_of:
            alias[tensor.name] = first_of[key]
        else:
            first_of[key] = tensor.name
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    boundary = {v.name for v in graph.input} | {v.name for v in graph.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        name = alias.get(name, name)
        if not short_names or not name or name in boundary:
            return name
        return short.setdefault(name, format(len(short), "x"))

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
        if short_names:
            node.name = ""


def optimized_op_counts(path: str | Path, threads: int = 1) -> dict[str, int]:
    """The operators ONNX Runtime actually runs: op counts of the session's optimized graph
    (e.g. ``QLinearConv`` where DQ -> Conv -> Q was fused into an integer convolution)."""
    import tempfile

    from last_lite.export.onnx import op_counts
    from last_lite.runtime.session import ort_session

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "optimized.onnx"
        # saving an optimised graph warns that NchwcTransformer output is hardware specific: it is
        # only counted here, never shipped
        ort.set_default_logger_severity(3)
        try:
            ort_session(path, threads=int(threads), optimized_path=opt)
        finally:
            ort.set_default_logger_severity(2)
        return op_counts(opt)


def int8_ops(counts: Mapping[str, int]) -> dict[str, int]:
    """The integer kernels among an optimized graph's op counts."""
    return {k: v for k, v in counts.items()
            if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize",
                             "QAttention", "MatMulIntegerToFloat", "NhwcQLinear"))
            or k in ("QuantizeLinear", "DequantizeLinear")}
