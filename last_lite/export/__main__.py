"""``python -m last_lite.export ckpt=<run>/checkpoints/best.ckpt export=<onnx|onnx_int8|tensorrt>``.

A Hydra app (conf/export.yaml, group ``export/``). It rebuilds the network from the checkpoint's
``model_spec`` (weights loaded with ``weights_only=True``), the DataModule from the run folder's
``config.yaml``, and writes into ``out_dir`` (default ``<run folder>/export/<backend>/``):

- ``onnx``:      ``model.onnx`` (FP32), ``report.json`` / ``metrics.json`` / ``report.md``,
                 ``predictions.json`` (test-split predictions);
- ``onnx_int8``: also ``model_int8.onnx`` (QDQ), evaluated beside FP32 on the whole test split;
- ``tensorrt``:  ``model.onnx`` and ``model_<precision>.engine`` (+ ``model_trt_int8.onnx``).

Hydra writes nothing of its own (``hydra.run.dir: .``, no ``.hydra`` folder, logging to stdout).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("last_lite.export")

BACKENDS = ("onnx", "onnx_int8", "tensorrt")
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Constant", "Slice", "Identity",
              "Reshape", "Flatten", "Cast", "ConstantOfShape"}


class ExportError(RuntimeError):
    """A check of the export failed (the report is written before this is raised)."""


# ------------------------------------------------------------------------------------------------
# checkpoint, run folder, data
# ------------------------------------------------------------------------------------------------
def run_dir_of(ckpt: Path) -> Path:
    """The run folder of a checkpoint: ``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_trained_model(ckpt: Path):
    """(model in eval mode, model_spec, data_spec, checkpoint dict) from a Lightning checkpoint."""
    from last_lite.models.registry import create_model
    from last_lite.training.checkpoints import load_checkpoint

    state = load_checkpoint(ckpt)
    hparams = state.get("hyper_parameters") or {}
    spec = hparams.get("model_spec")
    if not spec:
        raise ValueError(f"{ckpt} has no hyper_parameters.model_spec (not a last_lite checkpoint?)")
    model = create_model(**dict(spec))
    weights = {k[len("model."):]: v for k, v in (state.get("state_dict") or {}).items()
               if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    return model.eval(), dict(spec), dict(hparams.get("data_spec") or {}), state


def data_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    path = Path(cfg.data_config) if cfg.get("data_config") else run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no data config: {path} does not exist (the run folder's "
                                f"config.yaml); pass data_config=<yaml with a `data` key>")
    loaded = OmegaConf.load(path)
    data = loaded.get("data") if "data" in loaded else loaded
    if data is None or "_target_" not in data:
        raise ValueError(f"{path} holds no `data` group with a _target_")
    data = OmegaConf.merge(data, OmegaConf.create(OmegaConf.to_container(
        cfg.get("data_overrides") or {}, resolve=True)))
    return data


def build_datamodule(data_cfg: DictConfig):
    from hydra.utils import instantiate

    dm = instantiate(data_cfg, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    return dm


def infer_prenormalize(data_cfg: Mapping[str, Any], coord_dims: int, override: str = "auto") -> str:
    """The normalisation the data source applied before the store (the runtime repeats it)."""
    if override and override != "auto":
        if override not in ("3d", "2d", "none"):
            raise ValueError(f"normalization.prenormalize must be auto, 3d, 2d or none, got {override!r}")
        return override
    source = dict(data_cfg.get("source") or {})
    target = str(source.get("_target_", "")).rsplit(".", 1)[-1]
    if target in ("SyntheticSource", "NTUSource"):
        return "3d"
    if target == "NWUCLASource":
        return "3d" if source.get("normalize", True) else "none"
    if target == "CTRGCNSource":
        mode = str(source.get("normalize", "none"))
        if mode == "none":
            log.warning("CTR-GCN npz data were normalised by CTR-GCN's seq_transformation, which the "
                        "runtime does not reproduce: feed the runtime frames normalised the same way, "
                        "or set normalization.prenormalize")
        return mode
    if target in ("CustomSource", "PYSKLSource"):
        mode = str(source.get("normalize", "auto"))
        return ("3d" if coord_dims == 3 else "2d") if mode == "auto" else mode
    raise ValueError(f"cannot tell how {target or 'this source'} normalised its data; set "
                     f"normalization.prenormalize=3d|2d|none")


def source_name(data_cfg: Mapping[str, Any]) -> str:
    target = str(dict(data_cfg.get("source") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    return {"SyntheticSource": "synthetic", "NTUSource": "ntu", "NWUCLASource": "nw_ucla",
            "CTRGCNSource": "ctrgcn", "CustomSource": "custom", "PYSKLSource": "pyskl"}.get(target, target)


def normalization_meta(data_cfg: Mapping[str, Any], dm, override: str = "auto") -> dict[str, Any]:
    """What ``normalize_clip`` needs at the edge: exactly the test loader's arguments."""
    tf = dict(data_cfg.get("train_transform") or {})
    return {"prenormalize": infer_prenormalize(data_cfg, int(dm.coord_dims), override),
            "mode": str(tf.get("temporal", "resize")),
            "crop_ratio": float(tf.get("test_crop_ratio", 0.95)),
            "spatial_norm": tf.get("spatial_norm"),
            "num_clips": int(data_cfg.get("test_clips", 1) or 1),
            "coord_dims": int(dm.coord_dims),
            "source": source_name(data_cfg)}


def first_samples(loader, n: int) -> np.ndarray:
    from last_lite.export.report import numpy_batches

    out, seen = [], 0
    for x, _ in numpy_batches(loader):
        out.append(x[:n - seen])
        seen += len(out[-1])
        if seen >= n:
            break
    if not out:
        return np.zeros((0,), np.float32)
    return np.concatenate(out)


def parity_samples(dm, n: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` real clips: the test split, else validation, else calibration samples."""
    for name, loader in (("test", dm.test_dataloader()), ("val", dm.val_dataloader()),
                         ("train (calibration)", dm.calibration_dataloader(n))):
        if loader:
            x = first_samples(loader, n)
            if len(x):
                return x, name
    raise ValueError("the DataModule has no samples to check the export on")


# ------------------------------------------------------------------------------------------------
# the backends' shared steps
# ------------------------------------------------------------------------------------------------
def export_fp32(model, path: Path, cfg: DictConfig, data_spec: dict, metadata: dict,
                int8_friendly: bool = False) -> dict[str, Any]:
    from last_lite.export.onnx import export_onnx

    strict = str(getattr(model, "__class__").__name__) == "LASTNet" and not _has_subset_att(model)
    return export_onnx(model, path, clip_len=int(data_spec["clip_len"]),
                       max_persons=int(data_spec["max_persons"]), metadata=metadata,
                       opset=int(cfg.opset), fold_bn=bool(cfg.fold_bn),
                       graph_rewrite=bool(cfg.graph_rewrite), int8_friendly=int8_friendly,
                       require_no_batchnorm=strict and bool(cfg.fold_bn))


def _has_subset_att(model) -> bool:
    return any(getattr(m, "subset_att", None) is not None for m in model.modules())


def check_parity(model, session, x: np.ndarray, atol: float, source: str) -> dict[str, Any]:
    from last_lite.export.onnx import ort_logits, torch_logits

    ref = torch_logits(model, x)
    got = ort_logits(session, x)
    diff = float(np.abs(ref - got).max()) if len(x) else 0.0
    return {"samples": int(len(x)), "split": source, "max_abs_diff": diff, "atol": float(atol),
            "passed": bool(diff <= atol), "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean())}


def quantize(fp32_for_int8: Path, out: Path, dm, qcfg: Mapping[str, Any],
             calib: Mapping[str, Any]) -> dict[str, Any]:
    from last_lite.export.quantize import calibration_batches, quantize_int8

    batches = calibration_batches(dm.calibration_dataloader(int(calib["samples"]), int(calib["seed"])))
    return quantize_int8(fp32_for_int8, out, batches, method=str(calib["method"]),
                         per_channel=bool(qcfg["per_channel"]), op_types=qcfg.get("op_types"),
                         keep_float_ops=qcfg.get("keep_float_ops"),
                         extra_options=dict(qcfg.get("extra_options") or {}),
                         activation_type=str(qcfg["activation_type"]),
                         weight_type=str(qcfg["weight_type"]),
                         reduce_range=bool(qcfg.get("reduce_range", False)),
                         percentile=float(calib.get("percentile", 99.999)),
                         num_bins=calib.get("num_bins"),
                         short_names=bool(qcfg.get("short_names", True)),
                         chunk_samples=int(calib.get("chunk_samples", 32)))


def ops_run(path: Path, threads: int | None) -> tuple[dict[str, int], dict[str, int]]:
    """(integer kernels, float compute ops) in ORT's optimized graph of ``path``."""
    from last_lite.export.quantize import int8_ops, optimized_op_counts

    counts = optimized_op_counts(path, threads=int(threads or 1))
    ints = int8_ops(counts)
    floats = {k: v for k, v in counts.items() if k not in ints and k not in _SHAPE_OPS}
    return ints, floats


# ------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------
def run(cfg: DictConfig) -> dict[str, Any]:
    """Export per ``cfg``; returns the report record. Raises :class:`ExportError` after writing
    the report when a check fails, SystemExit (nothing written) when TensorRT is unavailable."""
    backend = str(cfg.export.name)
    if backend not in BACKENDS:
        raise ValueError(f"unknown export backend {backend!r}; expected one of {BACKENDS}")
    if backend == "tensorrt":
        from last_lite.export.tensorrt import TensorRTUnavailable, require_tensorrt

        try:
            require_tensorrt()
        except TensorRTUnavailable as exc:
            raise SystemExit(f"last_lite.export: {exc} Nothing was written.") from None

    from last_lite.export.onnx import build_metadata, ort_session
    from last_lite.export.report import evaluate_sessions, file_facts, time_session, write_report
    from last_lite.io import atomic_write_json
    from last_lite.models.profile import count_parameters
    from last_lite.training.records import metrics_record

    started = time.time()
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
    out_dir = Path(cfg.out_dir).expanduser().resolve() if cfg.get("out_dir") else run_dir / "export" / backend
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = int(cfg.threads) if cfg.get("threads") else None

    deploy = model
    params = count_parameters(_without_training_parts(model))
    norm = normalization_meta(data_cfg, dm, str(cfg.normalization.prenormalize))
    metadata = build_metadata(model_name=model_spec["name"], class_names=data_spec["class_names"],
                              layout=data_spec["layout"], clip_len=data_spec["clip_len"],
                              max_persons=data_spec["max_persons"],
                              in_channels=data_spec["in_channels"], coord_dims=dm.coord_dims,
                              normalization=norm, model_spec=model_spec,
                              dataset=data_spec.get("dataset"))

    log.info("exporting %s (%s) to %s", model_spec["name"], ckpt, out_dir)
    fp32_path = out_dir / "model.onnx"
    export_facts = export_fp32(deploy, fp32_path, cfg, data_spec, metadata)
    sess32 = ort_session(fp32_path, threads)
    x_par, par_split = parity_samples(dm, int(cfg.parity.samples))
    parity = check_parity(model, sess32, x_par, float(cfg.parity.atol), par_split)
    log.info("ONNX Runtime vs PyTorch on %d %s clips: max |diff| %.2e", parity["samples"], par_split,
             parity["max_abs_diff"])

    files = {"fp32": file_facts(fp32_path, params)}
    runners: dict[str, Any] = {"fp32": sess32}
    extra: dict[str, Any] = {}
    deployable = "fp32"
    failures = [] if parity["passed"] else [
        f"ONNX Runtime differs from PyTorch by {parity['max_abs_diff']:.2e} > {parity['atol']:.0e}"]

    if backend == "onnx_int8":
        q_path = out_dir / "model_int8.onnx"
        qcfg = cfg.export.quantization
        src = fp32_path
        tmp_src = out_dir / ".model_int8_source.onnx"
        try:
            if qcfg.get("int8_friendly_graph", True):
                export_fp32(deploy, tmp_src, cfg, data_spec, metadata, int8_friendly=True)
                src = tmp_src
            qinfo = quantize(src, q_path, dm, OmegaConf.to_container(qcfg, resolve=True),
                             OmegaConf.to_container(cfg.export.calibration, resolve=True))
        finally:
            tmp_src.unlink(missing_ok=True)
        qinfo["int8_ops_run"], qinfo["float_ops_run"] = ops_run(q_path, threads)
        extra["quantization"] = qinfo
        files["int8"] = file_facts(q_path, params)
        runners["int8"] = ort_session(q_path, threads)
        deployable = "int8"

    if backend == "tensorrt":
        extra["tensorrt"], trt_runner, trt_fail = _tensorrt(cfg, dm, deploy, data_spec, metadata,
                                                            out_dir, fp32_path, sess32, params, files)
        failures += trt_fail
        runners["tensorrt"] = trt_runner
        deployable = "tensorrt"

    evaluation: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    test_loader = dm.test_dataloader()
    if cfg.get("evaluate", True) and test_loader:
        ev = evaluate_sessions(runners, test_loader, len(data_spec["class_names"]),
                               batch_size=int(cfg.eval_batch_size))
        evaluation = {"split": "test", "samples": int(len(ev["labels"])),
                      "models": {k: {kk: vv for kk, vv in v.items() if kk != "per_class_accuracy"}
                                 for k, v in ev["models"].items()},
                      "agreement": ev["agreement"]}
        if "int8" in ev["models"]:
            t32, t8 = ev["models"]["fp32"]["top1"], ev["models"]["int8"]["top1"]
            evaluation["top1_drop"] = None if t32 is None or t8 is None else t32 - t8
            evaluation["int8_agreement"] = ev["agreement"].get("int8")
        names = dm.store.names
        predictions = {"split": "test", "sample_names": [names[int(i)] for i in dm.test_indices],
                       "labels": ev["labels"].tolist(),
                       "predictions": {k: v.argmax(1).tolist() for k, v in ev["logits"].items()}}
        per_class = ev["models"][deployable]["per_class_accuracy"]
        top1, top5 = ev["models"][deployable]["top1"], ev["models"][deployable]["top5"]
    else:
        per_class = top1 = top5 = None

    latency: dict[str, Any] = {"threads": threads}
    x1 = x_par.reshape(-1, *x_par.shape[-4:])[:1]
    for name, runner in runners.items():
        if name == "tensorrt":
            latency[name] = runner.latency(x1, repeats=int(cfg.latency.repeats))
        else:
            latency[name] = time_session(runner, x1, int(cfg.latency.warmup), int(cfg.latency.repeats))
    if "int8" in latency:
        latency["speedup"] = latency["fp32"]["p50_ms"] / max(latency["int8"]["p50_ms"], 1e-9)
    if "tensorrt" in runners:
        runners["tensorrt"].close()

    record = metrics_record(
        command="export", model=model_spec["name"], dataset=str(data_spec.get("dataset") or "custom"),
        top1=top1, top5=top5, per_class_accuracy=per_class, class_names=data_spec["class_names"],
        params=params, epochs=state.get("epoch"), seed=None, wall_time_s=time.time() - started,
        data_index_sha256=getattr(dm, "index_checksum", None),
        backend=backend, deployable=deployable, checkpoint=str(ckpt), output_dir=str(out_dir),
        files=files, export=export_facts, parity=parity, evaluation=evaluation, latency=latency,
        metadata={k: v for k, v in _decoded(metadata).items() if k != "class_names"},
        failures=failures, **extra)
    if predictions:
        atomic_write_json(out_dir / "predictions.json", predictions)
    write_report(out_dir, record)
    _print_summary(record)
    if failures:
        raise ExportError("; ".join(failures) + f" (report: {out_dir / 'report.md'})")
    return record


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _without_training_parts(model):
    from last_lite.export.onnx import drop_training_parts

    m = _copy(model)
    drop_training_parts(m)
    return m


def _decoded(metadata: Mapping[str, str]) -> dict[str, Any]:
    import json

    return {k: json.loads(v) for k, v in metadata.items()}


def _tensorrt(cfg, dm, model, data_spec, metadata, out_dir: Path, fp32_path: Path, sess32, params,
              files) -> tuple[dict[str, Any], Any, list[str]]:
    """Build the engine (fp16 from the FP32 model, int8 from a symmetric QDQ model), compare it
    with ONNX Runtime on real test clips."""
    from last_lite.export.onnx import ort_session
    from last_lite.export.report import file_facts
    from last_lite.export.tensorrt import EngineRunner, build_engine, compare_with_ort

    tcfg = cfg.export
    precision = str(tcfg.precision)
    src, ref_session, info = fp32_path, sess32, {}
    if precision == "int8":
        src = out_dir / "model_trt_int8.onnx"
        qcfg = OmegaConf.to_container(tcfg.quantization, resolve=True)
        info["quantization"] = quantize(fp32_path, src, dm, qcfg,
                                        OmegaConf.to_container(tcfg.calibration, resolve=True))
        files["trt_qdq"] = file_facts(src, params)
        ref_session = ort_session(src, cfg.get("threads"))
    sample = (int(data_spec["in_channels"]), int(data_spec["clip_len"]),
              int(sess32.get_inputs()[0].shape[3]), int(data_spec["max_persons"]))
    engine_path = out_dir / f"model_{precision}.engine"
    info.update(build_engine(src, engine_path, precision=precision, input_shape=sample,
                             max_batch=int(tcfg.max_batch), opt_batch=int(tcfg.opt_batch),
                             workspace_mib=int(tcfg.workspace_mib)))
    files["tensorrt"] = file_facts(engine_path, params)
    runner = EngineRunner(engine_path, device=int(tcfg.device))
    info["device"] = runner.device_name
    x, split = parity_samples(dm, int(tcfg.compare_samples))
    cmp = compare_with_ort(runner, ref_session, x)
    cmp32 = compare_with_ort(runner, sess32, x) if precision == "int8" else cmp
    info.update(max_abs_diff=cmp["max_abs_diff"], agreement=cmp["agreement"], compared_on=split,
                samples=cmp["samples"], vs_fp32=cmp32)
    failures = []
    if not cmp["finite"]:
        failures.append("the TensorRT engine produced non-finite logits")
    if precision != "int8" and cmp["max_abs_diff"] is not None and cmp["max_abs_diff"] > float(tcfg.max_abs_diff):
        failures.append(f"TensorRT {precision} differs from ONNX Runtime by {cmp['max_abs_diff']:.3g} "
                        f"> {float(tcfg.max_abs_diff)}")
    if cmp["agreement"] is not None and cmp["agreement"] < float(tcfg.min_agreement):
        failures.append(f"TensorRT top-1 agreement with ONNX Runtime {cmp['agreement']:.3f} < "
                        f"{float(tcfg.min_agreement)}")
    return info, runner, failures


def _print_summary(record: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export ({record['backend']}): {record['model']} on {record['dataset']}")
    for col in ("model", "size", "bytes/param", "top-1", "agreement", "batch-1 p50"):
        table.add_column(col)
    ev = record.get("evaluation") or {}
    models = ev.get("models") or {name: {} for name in record["files"] if name in ("fp32", "int8", "tensorrt")}
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
    main()
