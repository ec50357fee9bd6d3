"""Evaluation, latency and the export report (``report.json`` + ``report.md`` + ``metrics.json``).

The report is a :func:`last_lite.training.records.metrics_record` with ``command="export"`` (the
schema every command writes), extended with the export's facts: files and sizes, bytes per
parameter, parity against PyTorch, FP32 / INT8 top-1 on the whole test split, their agreement,
the operators ONNX Runtime runs, and batch-1 latency. All files are written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from last_lite.io import atomic_write_json, atomic_write_text


def numpy_batches(loader: Iterable) -> Iterable[tuple[np.ndarray, np.ndarray | None]]:
    """(x float32, labels int64 or None) numpy batches of a DataLoader."""
    for batch in loader:
        x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
        if y is not None:
            y = np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.int64)
        yield x, y


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """top-1 / top-5 (fractions) and per-class accuracy of ``logits`` (N, K)."""
    n = len(labels)
    if n == 0:
        return {"top1": None, "top5": None, "per_class_accuracy": [None] * num_classes, "samples": 0}
    pred = logits.argmax(axis=1)
    k = min(5, logits.shape[1])
    top5 = np.argsort(-logits, axis=1)[:, :k]
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return {"top1": float((pred == labels).mean()), "top5": float((top5 == labels[:, None]).any(1).mean()),
            "per_class_accuracy": per_class, "samples": int(n)}


def evaluate_sessions(runners: Mapping[str, Any], loader: Iterable, num_classes: int,
                      batch_size: int = 64) -> dict[str, Any]:
    """Run every ``runners[name](x) -> logits`` over the whole loader; metrics per runner, the
    pairwise top-1 agreement with the first runner, and the logits (for tests / the runtime)."""
    from last_lite.export.onnx import ort_logits

    names = list(runners)
    logits: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[np.ndarray] = []
    for x, y in numpy_batches(loader):
        for name in names:
            run = runners[name]
            logits[name].append(run(x) if callable(run) else ort_logits(run, x, batch_size))
        if y is not None:
            labels.append(y)
    out: dict[str, Any] = {"models": {}, "logits": {}}
    lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    for name in names:
        lg = np.concatenate(logits[name]) if logits[name] else np.zeros((0, num_classes), np.float32)
        out["logits"][name] = lg
        out["models"][name] = classification_metrics(lg, lab, num_classes)
    ref = out["logits"][names[0]].argmax(1) if len(lab) else np.zeros(0)
    out["agreement"] = {name: (float((out["logits"][name].argmax(1) == ref).mean()) if len(ref) else None)
                        for name in names[1:]}
    out["labels"] = lab
    return out


def time_calls(call: Callable[[], Any], batch: int, warmup: int = 10, repeats: int = 50) -> dict[str, float]:
    """Wall-clock latency of ``call()`` after ``warmup`` calls: p50 / p95 / mean in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e3)
    t = np.asarray(times)
    return {"p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
            "mean_ms": float(t.mean()), "repeats": int(repeats), "batch": int(batch)}


def time_session(session, x: np.ndarray, warmup: int = 10, repeats: int = 50) -> dict[str, float]:
    """Wall-clock latency of an ONNX Runtime ``session.run`` on ``x`` (:func:`time_calls`)."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return time_calls(lambda: session.run(None, feed), int(x.shape[0]), warmup, repeats)


def file_facts(path: str | Path, params: int) -> dict[str, Any]:
    size = Path(path).stat().st_size
    return {"path": str(path), "bytes": int(size), "bytes_per_param": round(size / max(params, 1), 3)}


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def markdown_report(record: Mapping[str, Any]) -> str:
    """A human summary of an export record."""
    lines = [f"# Export report: {record.get('model')} ({record.get('backend')})", "",
             f"- checkpoint: `{record.get('checkpoint')}`",
             f"- dataset: {record.get('dataset')}, test samples: "
             f"{(record.get('evaluation') or {}).get('samples', '-')}",
             f"- parameters: {record.get('params'):,}", ""]
    ev = record.get("evaluation") or {}
    rows = ev.get("models") or {}
    if rows:
        lines += ["| model | file | size | bytes/param | top-1 | top-5 | agreement with FP32 "
                  "| batch-1 p50 |", "|---|---|---|---|---|---|---|---|"]
        files = record.get("files") or {}
        lat = record.get("latency") or {}
        agree = ev.get("agreement") or {}
        for name, m in rows.items():
            f = files.get(name) or {}
            size = f"{f['bytes'] / 1024:.1f} KiB" if f else "-"
            bpp = f"{f['bytes_per_param']:.2f}" if f else "-"
            ag = "-" if name not in agree else _pct(agree[name])
            p50 = f"{lat[name]['p50_ms']:.2f} ms" if name in lat else "-"
            lines.append(f"| {name} | {Path(f.get('path', '-')).name} | {size} | {bpp} | "
                         f"{_pct(m.get('top1'))} | {_pct(m.get('top5'))} | {ag} | {p50} |")
        lines.append("")
    if ev.get("top1_drop") is not None:
        lines.append(f"- INT8 top-1 drop: {100 * ev['top1_drop']:.2f} points "
                     f"(agreement {_pct(ev.get('int8_agreement'))})")
    par = record.get("parity") or {}
    if par:
        lines.append(f"- ONNX Runtime vs PyTorch on {par.get('samples')} test samples: max |logit "
                     f"diff| = {par.get('max_abs_diff'):.2e} (tolerance {par.get('atol'):.0e}: "
                     f"{'pass' if par.get('passed') else 'FAIL'})")
    lat = record.get("latency") or {}
    if lat.get("speedup") is not None:
        lines.append(f"- INT8 speed-up over FP32 (batch 1, {lat.get('threads') or 'default'} thread(s)): "
                     f"{lat['speedup']:.2f}x")
    ex = record.get("export") or {}
    if ex:
        lines.append(f"- opset {ex.get('opset')}; BatchNorm folded: {ex.get('batchnorm_folded')}, "
                     f"left: {ex.get('batchnorm_nodes')}; graph convs rewritten: "
                     f"{ex.get('graph_convs_rewritten')}; dropped: {ex.get('dropped') or '-'}")
    q = record.get("quantization") or {}
    if q:
        lines.append(f"- quantization: {q.get('format')}, {q.get('method')} on "
                     f"{q.get('calibration_samples')} training samples, per-channel "
                     f"{q.get('per_channel')}, activations {q.get('activation_type')}, weights "
                     f"{q.get('weight_type')}, kept in float: {q.get('keep_float_ops')}")
        ops = q.get("int8_ops_run") or {}
        if ops:
            lines.append("- operators ONNX Runtime runs in INT8: "
                         + ", ".join(f"{k} x{v}" for k, v in ops.items()))
        fl = q.get("float_ops_run") or {}
        if fl:
            lines.append("- operators left in float: " + ", ".join(f"{k} x{v}" for k, v in fl.items()))
    trt = record.get("tensorrt") or {}
    if trt:
        lines.append(f"- TensorRT {trt.get('version')} {trt.get('precision')} engine on "
                     f"{trt.get('device')}: max |diff| vs ONNX Runtime {trt.get('max_abs_diff')}, "
                     f"top-1 agreement {_pct(trt.get('agreement'))}")
    tfl = record.get("tflite") or {}
    if tfl:
        fp = (tfl.get("fp32") or {}).get("parity_vs_pytorch") or {}
        lines.append(f"- TFLite (LiteRT {(tfl.get('converter') or {}).get('ai-edge-litert')}): FP32 vs PyTorch max "
                     f"|diff| {fp.get('max_abs_diff', float('nan')):.2e} on {fp.get('samples')} {fp.get('split')} clips")
        q8 = tfl.get("int8") or {}
        if q8:
            drop = (ev.get("top1_drop_vs_fp32") or {}).get("tflite_int8")
            lines.append(f"- TFLite INT8: {q8.get('scheme')}, {q8.get('calibration_samples')} training clips; "
                         f"input {q8.get('input_dtype')}, output {q8.get('output_dtype')}; top-1 cost vs FP32: "
                         + ("-" if drop is None else f"{100 * drop:.2f} points"))
    om = record.get("ort_mobile") or {}
    if om:
        lines.append(f"- ORT mobile format (target {om.get('target_platform')}): "
                     + ", ".join(f"{v['file']} vs {v['source']} max |diff| {v['max_abs_diff_vs_onnx']:.2e}"
                                 for v in (om.get("files") or {}).values())
                     + f"; operators for a reduced build: {om.get('required_operators')}")
    cml = record.get("coreml") or {}
    if cml:
        for name, m in (cml.get("models") or {}).items():
            lines.append(f"- Core ML {name}: {m.get('file')} ({m.get('bytes', 0) / 1024:.1f} KiB), inputs "
                         f"{m.get('inputs')}, outputs {list(m.get('outputs') or [])}")
        if cml.get("prediction"):
            lines.append(f"- Core ML prediction {cml['prediction']}")
    lines.append("")
    return "\n".join(lines)


def write_report(out_dir: str | Path, record: Mapping[str, Any]) -> dict[str, Path]:
    """``report.json`` and ``metrics.json`` (the same record) and ``report.md``, atomically."""
    out_dir = Path(out_dir)
    return {"report.json": atomic_write_json(out_dir / "report.json", record),
            "metrics.json": atomic_write_json(out_dir / "metrics.json", record),
            "report.md": atomic_write_text(out_dir / "report.md", markdown_report(record))}
