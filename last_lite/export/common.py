"""What every export backend shares: checkpoint -> model, run folder -> DataModule, the test-time
normalisation recorded for the runtime, the FP32 ONNX file, parity with PyTorch, INT8 quantisation
and :class:`ExportContext`, the state one export run hands from step to step."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("last_lite.export")

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
    from last_lite.training.checkpoints import load_trained_model as load

    model, state = load(ckpt)
    hparams = state["hyper_parameters"]
    return model, dict(hparams["model_spec"]), dict(hparams.get("data_spec") or {}), state


def data_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    path = Path(cfg.data_config) if cfg.get("data_config") else run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no data config: {path} does not exist (the run folder's "
                                f"config.yaml); pass data_config=<yaml with a `data` key>")
    from last_lite.config_checks import distrust, safe_data_config

    loaded = OmegaConf.load(path)
    data = loaded.get("data") if isinstance(loaded, DictConfig) and "data" in loaded else loaded
    if data is None or not isinstance(data, DictConfig) or "_target_" not in data:
        raise ValueError(f"{path} holds no `data` group with a _target_")
    overrides = cfg.get("data_overrides")
    overrides = OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) else {}
    data = OmegaConf.merge(data, OmegaConf.create(overrides))
    # A run folder's config is data, not code: only the project's own classes are built from it.
    data = safe_data_config(data, str(path))
    distrust(data, overrides)
    return OmegaConf.create(data)


def build_datamodule(data_cfg: DictConfig):
    from hydra.utils import instantiate

    from last_lite.config_checks import safe_data_config
    from last_lite.data.sources.pyskl import UntrustedPickleError

    try:
        dm = instantiate(safe_data_config(data_cfg, "the data config"), _convert_="all")
    except Exception as exc:  # Hydra wraps the source's refusal in an InstantiationException
        refusal = exc
        while refusal is not None and not isinstance(refusal, UntrustedPickleError):
            refusal = refusal.__cause__ or refusal.__context__
        if refusal is None:
            raise
        # the source's own advice (data.source.trusted=true) is the training command's spelling
        path = OmegaConf.select(data_cfg, "source.path", default="of the data source")
        raise UntrustedPickleError(
            f"refusing to load the pickle {path}: unpickling can execute arbitrary code, and a config "
            f"file (the run folder's config.yaml, data_config=) cannot mark it as trusted: its "
            f"source.trusted is ignored. If you obtained the file from a source you trust, pass "
            f"+data_overrides.source.trusted=true on the export command line.") from None
    dm.prepare_data()
    dm.setup("test")
    return dm


def infer_prenormalize(data_cfg: Mapping[str, Any], coord_dims: int, override: str = "auto") -> str:
    """The normalisation the data source applied before the store (the runtime repeats it), for
    stores written before sources recorded it (``SkeletonStore.prenormalize``)."""
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
    recorded = getattr(dm.store, "prenormalize", None)  # what the source wrote into the store
    prenormalize = (recorded if recorded is not None and override in (None, "auto")
                    else infer_prenormalize(data_cfg, int(dm.coord_dims), override))
    return {"prenormalize": prenormalize,
            "mode": str(tf.get("temporal", "resize")),
            "crop_ratio": float(tf.get("test_crop_ratio", 0.95)),
            "spatial_norm": tf.get("spatial_norm"),
            "num_clips": int(data_cfg.get("test_clips", 1) or 1),
            "coord_dims": int(dm.coord_dims),
            "source": source_name(data_cfg)}


def first_samples(loader, n: int) -> np.ndarray:
    from last_lite.export.results import numpy_batches

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

    strict = str(model.__class__.__name__) == "LASTNet" and not _has_subset_att(model)
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


def without_training_parts(model):
    """A copy of ``model`` without what only training uses (the exported network's parameters)."""
    from last_lite.export.onnx import drop_training_parts

    m = copy.deepcopy(model)
    drop_training_parts(m)
    return m


def decoded(metadata: Mapping[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in metadata.items()}


@dataclass
class ExportContext:
    """One export run: the inputs every backend reads and the results each one adds."""

    cfg: DictConfig
    model: Any
    model_spec: dict
    data_spec: dict
    dm: Any
    out_dir: Path
    threads: int | None
    params: int
    metadata: dict
    fp32_path: Path
    sess32: Any
    parity_x: np.ndarray
    files: dict = field(default_factory=dict)
    runners: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    deployable: str = "fp32"

    def add_runner(self, name: str, path: Path, runner: Any) -> None:
        """A deployable file and what runs it (evaluated and timed with the others)."""
        from last_lite.export.results import file_facts

        self.files[name] = file_facts(path, self.params)
        self.runners[name] = runner
        self.deployable = name
