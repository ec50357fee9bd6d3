"""``backend=coreml``: Core ML ``mlprogram`` packages, FP16 (``model.mlpackage``) and INT8 weights
(``model_int8w.mlpackage``), metadata in ``user_defined_metadata``. Core ML predicts on macOS only:
there the packages are evaluated on the test split like the ONNX models; elsewhere the report
records their spec (inputs, outputs, metadata, ops). Needs ``pip install -e '.[coreml]'``."""

from __future__ import annotations

import json

import numpy as np

from last_lite.export.backends import Backend


class CoreMLBackend(Backend):
    name = "coreml"

    def require(self) -> None:
        from last_lite.export.coreml import INSTALL, missing_modules

        missing = missing_modules()
        if missing:
            raise SystemExit(f"last_lite.export: backend=coreml needs {', '.join(missing)}: {INSTALL}. "
                             f"Nothing was written.")

    def build(self, ctx) -> None:
        from last_lite.export import coreml as cm
        from last_lite.export.onnx import prepare_for_export

        opts = self.options
        model, _ = prepare_for_export(ctx.model, fold_bn=bool(ctx.cfg.fold_bn),
                                      graph_rewrite=bool(ctx.cfg.graph_rewrite))
        meta = {**ctx.metadata, "format": json.dumps("last_lite.coreml/1")}
        spec_input = json.loads(ctx.metadata["input"])
        mlmodel = cm.convert(model, int(ctx.data_spec["clip_len"]), int(ctx.data_spec["max_persons"]), meta,
                             precision=str(opts.precision), input_name=spec_input.get("name", "skeleton"),
                             output_name=spec_input.get("output", "logits"),
                             minimum_target=str(opts.minimum_deployment_target))
        variants = {"coreml_" + str(opts.precision): ("model.mlpackage", mlmodel)}
        if opts.get("int8_weights", True):
            variants["coreml_int8w"] = ("model_int8w.mlpackage", cm.quantize_weights(mlmodel, meta))
        info: dict = {"coremltools": _version(), "predicts_here": cm.can_predict(), "models": {}}
        for name, (fname, mm) in variants.items():
            path = ctx.out_dir / fname
            cm.save(mm, path)
            facts = cm.spec_facts(mm)
            facts.update(file=fname, bytes=cm.folder_bytes(path))
            info["models"][name] = facts
            ctx.files[name] = {"path": str(path), "bytes": facts["bytes"],
                               "bytes_per_param": round(facts["bytes"] / max(ctx.params, 1), 3)}
            if cm.can_predict():  # pragma: no cover - macOS only
                runner = _CoreMLRunner(mm, spec_input.get("name", "skeleton"), spec_input.get("output", "logits"))
                ctx.runners[name] = runner
                ctx.deployable = name
        if not cm.can_predict():
            info["prediction"] = f"skipped: Core ML predicts on macOS only (this is {_platform()})"
        ctx.extra["coreml"] = info


class _CoreMLRunner:  # pragma: no cover - macOS only
    def __init__(self, mlmodel, input_name: str, output_name: str) -> None:
        self.mlmodel, self.input_name, self.output_name = mlmodel, input_name, output_name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        clips = None
        if x.ndim == 6:
            clips = x.shape[1]
            x = x.reshape(-1, *x.shape[2:])
        out = np.stack([np.asarray(self.mlmodel.predict({self.input_name: x[i:i + 1]})[self.output_name])[0]
                        for i in range(len(x))]).astype(np.float32)
        return out.reshape(-1, clips, out.shape[-1]).mean(1) if clips else out

    def latency(self, x: np.ndarray, repeats: int = 50) -> dict:
        from last_lite.export.results import time_calls

        feed = {self.input_name: np.ascontiguousarray(x[:1], np.float32)}
        return time_calls(lambda: self.mlmodel.predict(feed), 1, warmup=1, repeats=repeats)


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coremltools")
    except PackageNotFoundError:
        return None


def _platform() -> str:
    import platform

    return f"{platform.system()} {platform.machine()}"
