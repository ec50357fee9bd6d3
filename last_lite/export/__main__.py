"""``python -m last_lite.export ckpt=<run>/checkpoints/best.ckpt backend=<onnx|onnx_int8|tensorrt|tflite|coreml|ort>``.

A Hydra app (conf/export.yaml, group ``backend/``; the former ``export=<name>`` / ``export.*``
spellings are rewritten with a warning). It rebuilds the network from the checkpoint's
``model_spec`` (weights loaded with ``weights_only=True``), the DataModule from the run folder's
``config.yaml``, and writes into ``out_dir`` (default ``<run folder>/export/<backend>/``):

- ``onnx``:      ``model.onnx`` (FP32), ``report.json`` / ``metrics.json`` / ``report.md``,
                 ``predictions.json`` (test-split predictions);
- ``onnx_int8``: also ``model_int8.onnx`` (QDQ), evaluated beside FP32 on the whole test split;
- ``tensorrt``:  ``model.onnx`` and ``model_<precision>.engine`` (+ ``model_trt_int8.onnx``);
- ``tflite``:    ``model.tflite`` (FP32) and ``model_int8.tflite`` (full-integer INT8), LiteRT;
- ``coreml``:    ``model.mlpackage`` (FP16) and ``model_int8w.mlpackage`` (INT8 weights);
- ``ort``:       ``model.ort``, ``model_int8.ort`` (ORT mobile format) and ``required_operators.config``.

Hydra writes nothing of its own (``hydra.run.dir: .``, no ``.hydra`` folder, logging to stdout).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig

from last_lite.export.backends import backend_for
from last_lite.export.common import (ExportContext, ExportError, build_datamodule, check_parity,
                                     data_config, decoded, export_fp32, load_trained_model,
                                     normalization_meta, parity_samples, run_dir_of,
                                     without_training_parts)

log = logging.getLogger("last_lite.export")

__all__ = ["ExportError", "main", "run"]


def prepare(cfg: DictConfig, backend_name: str) -> ExportContext:
    """Checkpoint -> model, run folder -> DataModule, the FP32 ONNX model and its parity check."""
    from last_lite.export.onnx import build_metadata, ort_session
    from last_lite.models.profile import count_parameters

    ckpt = Path(str(cfg.ckpt)).expanduser().resolve()
    model, model_spec, data_spec, state = load_trained_model(ckpt)
    run_dir = run_dir_of(ckpt)
    data_cfg = data_config(cfg, run_dir)
    dm = build_datamodule(data_cfg)
    for key, value in (("clip_len", dm.clip_len), ("max_persons", dm.max_persons),
                       ("class_names", list(dm.class_names)), ("layout", dm.layout),
                       ("in_channels", dm.in_channels)):
        data_spec.setdefault(key, value)
    if list(data_spec["class_names"]) != list(dm.class_names):
        raise ValueError("the checkpoint's class names differ from the data's: wrong data_config?")
    out_dir = Path(cfg.out_dir).expanduser().resolve() if cfg.get("out_dir") else run_dir / "export" / backend_name
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = int(cfg.threads) if cfg.get("threads") else None
    params = count_parameters(without_training_parts(model))
    norm = normalization_meta(data_cfg, dm, str(cfg.normalization.prenormalize))
    metadata = build_metadata(model_name=model_spec["name"], class_names=data_spec["class_names"],
                              layout=data_spec["layout"], clip_len=data_spec["clip_len"],
                              max_persons=data_spec["max_persons"],
                              in_channels=data_spec["in_channels"], coord_dims=dm.coord_dims,
                              normalization=norm, model_spec=model_spec,
                              dataset=data_spec.get("dataset"))

    log.info("exporting %s (%s) to %s", model_spec["name"], ckpt, out_dir)
    fp32_path = out_dir / "model.onnx"
    export_facts = export_fp32(model, fp32_path, cfg, data_spec, metadata)
    sess32 = ort_session(fp32_path, threads)
    x_par, par_split = parity_samples(dm, int(cfg.parity.samples))
    parity = check_parity(model, sess32, x_par, float(cfg.parity.atol), par_split)
    log.info("ONNX Runtime vs PyTorch on %d %s clips: max |diff| %.2e", parity["samples"], par_split,
             parity["max_abs_diff"])
    ctx = ExportContext(cfg=cfg, model=model, model_spec=model_spec, data_spec=data_spec, dm=dm,
                        out_dir=out_dir, threads=threads, params=params, metadata=metadata,
                        fp32_path=fp32_path, sess32=sess32, parity_x=x_par)
    ctx.add_runner("fp32", fp32_path, sess32)
    ctx.extra.update(checkpoint=str(ckpt), epochs=state.get("epoch"), export=export_facts, parity=parity)
    if not parity["passed"]:
        ctx.failures.append(f"ONNX Runtime differs from PyTorch by {parity['max_abs_diff']:.2e} > "
                            f"{parity['atol']:.0e}")
    return ctx


def evaluate(ctx: ExportContext) -> tuple[dict, dict, dict]:
    """(evaluation, predictions, the deployable model's metrics) on the whole test split."""
    from last_lite.export.results import evaluate_sessions

    test_loader = ctx.dm.test_dataloader()
    if not (ctx.cfg.get("evaluate", True) and test_loader):
        return {}, {}, {"per_class_accuracy": None, "top1": None, "top5": None}
    ev = evaluate_sessions(ctx.runners, test_loader, len(ctx.data_spec["class_names"]),
                           batch_size=int(ctx.cfg.eval_batch_size))
    evaluation = {"split": "test", "samples": int(len(ev["labels"])),
                  "models": {k: {kk: vv for kk, vv in v.items() if kk != "per_class_accuracy"}
                             for k, v in ev["models"].items()},
                  "agreement": ev["agreement"]}
    if "int8" in ev["models"]:
        t32, t8 = ev["models"]["fp32"]["top1"], ev["models"]["int8"]["top1"]
        evaluation["top1_drop"] = None if t32 is None or t8 is None else t32 - t8
        evaluation["int8_agreement"] = ev["agreement"].get("int8")
    t32 = ev["models"]["fp32"]["top1"]
    evaluation["top1_drop_vs_fp32"] = {  # every other deployable file (tflite_int8, ort_int8, ...)
        k: (None if t32 is None or v["top1"] is None else t32 - v["top1"])
        for k, v in ev["models"].items() if k != "fp32"}
    names = ctx.dm.store.names
    predictions = {"split": "test", "sample_names": [names[int(i)] for i in ctx.dm.test_indices],
                   "labels": ev["labels"].tolist(),
                   "predictions": {k: v.argmax(1).tolist() for k, v in ev["logits"].items()}}
    return evaluation, predictions, ev["models"][ctx.deployable]


def measure_latency(ctx: ExportContext) -> dict[str, Any]:
    """Batch-1 latency of every runner (TensorRT engines time themselves)."""
    from last_lite.export.results import time_session

    latency: dict[str, Any] = {"threads": ctx.threads}
    x1 = ctx.parity_x.reshape(-1, *ctx.parity_x.shape[-4:])[:1]
    warmup, repeats = int(ctx.cfg.latency.warmup), int(ctx.cfg.latency.repeats)
    for name, runner in ctx.runners.items():
        if hasattr(runner, "latency"):
            latency[name] = runner.latency(x1, repeats=repeats)
        else:
            latency[name] = time_session(runner, x1, warmup, repeats)
    if "int8" in latency:
        latency["speedup"] = latency["fp32"]["p50_ms"] / max(latency["int8"]["p50_ms"], 1e-9)
    return latency


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export per ``cfg``; returns the report record. Raises :class:`ExportError` after writing
    the report when a check fails, SystemExit (nothing written) when the backend cannot run here."""
    from last_lite.export.results import write_report
    from last_lite.io import atomic_write_json
    from last_lite.training.records import metrics_record

    started = time.time()
    backend = backend_for(cfg)
    backend.require()
    ctx = prepare(cfg, backend.name)
    backend.build(ctx)
    evaluation, predictions, deployed = evaluate(ctx)
    latency = measure_latency(ctx)
    for runner in ctx.runners.values():
        if hasattr(runner, "close"):
            runner.close()
    extra = dict(ctx.extra)
    record = metrics_record(
        command="export", model=ctx.model_spec["name"], dataset=str(ctx.data_spec.get("dataset") or "custom"),
        top1=deployed["top1"], top5=deployed["top5"], per_class_accuracy=deployed["per_class_accuracy"],
        class_names=ctx.data_spec["class_names"], params=ctx.params, epochs=extra.pop("epochs"), seed=None,
        wall_time_s=time.time() - started, data_index_sha256=getattr(ctx.dm, "index_checksum", None),
        backend=backend.name, deployable=ctx.deployable, checkpoint=extra.pop("checkpoint"),
        output_dir=str(ctx.out_dir), files=ctx.files, export=extra.pop("export"), parity=extra.pop("parity"),
        evaluation=evaluation, latency=latency,
        metadata={k: v for k, v in decoded(ctx.metadata).items() if k != "class_names"},
        failures=ctx.failures, **extra)
    if predictions:
        atomic_write_json(ctx.out_dir / "predictions.json", predictions)
    write_report(ctx.out_dir, record)
    print_summary(record)
    if ctx.failures:
        raise ExportError("; ".join(ctx.failures) + f" (report: {ctx.out_dir / 'report.md'})")
    return record


def print_summary(record: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export ({record['backend']}): {record['model']} on {record['dataset']}")
    for col in ("model", "size", "bytes/param", "top-1", "agreement", "batch-1 p50"):
        table.add_column(col)
    ev = record.get("evaluation") or {}
    models = ev.get("models") or {name: {} for name in record["files"]}
    for name, m in models.items():
        f = record["files"].get(name) or {}
        lat = (record.get("latency") or {}).get(name) or {}
        top1 = m.get("top1")
        agree = (ev.get("agreement") or {}).get(name)
        table.add_row(name, f"{f.get('bytes', 0) / 1024:.1f} KiB" if f else "-",
                      f"{f['bytes_per_param']:.2f}" if f else "-",
                      "-" if top1 is None else f"{100 * top1:.2f}%",
                      "-" if agree is None else f"{100 * agree:.2f}%",
                      f"{lat['p50_ms']:.2f} ms" if lat else "-")
    console = Console()
    console.print(table)
    par = record["parity"]
    console.print(f"parity vs PyTorch: max |diff| {par['max_abs_diff']:.2e} on {par['samples']} "
                  f"{par['split']} clips ({'ok' if par['passed'] else 'FAILED'}); "
                  f"outputs: {record['output_dir']}")


@hydra.main(config_path="../../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg).get("top1")
    except ExportError as exc:
        raise SystemExit(f"last_lite.export: {exc}") from None


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "export")
