"""``backend=tflite``: TFLite (LiteRT) FP32 and full-integer INT8 (int8 kernels, input and output:
Coral, NNAPI), calibrated on real training clips; both checked against PyTorch / ONNX Runtime and
evaluated on the test split with the LiteRT interpreter. Needs ``pip install -e '.[tflite]'``."""

from __future__ import annotations

import json

import numpy as np

from last_lite.export.backends import Backend


class TFLiteBackend(Backend):
    name = "tflite"

    def require(self) -> None:
        from last_lite.export.tflite import INSTALL, MODULES, missing_modules

        missing = missing_modules(MODULES)
        if missing:
            raise SystemExit(f"last_lite.export: backend=tflite needs {', '.join(missing)}: {INSTALL}. "
                             f"Nothing was written.")

    def build(self, ctx) -> None:
        from last_lite.export.common import check_parity
        from last_lite.export.onnx import prepare_for_export
        from last_lite.export.quantize import calibration_batches
        from last_lite.export.tflite import convert_fp32, convert_int8, write_tflite
        from last_lite.runtime.session import session_logits
        from last_lite.runtime.tflite import TFLiteSession

        opts = self.options
        clip_len, persons = int(ctx.data_spec["clip_len"]), int(ctx.data_spec["max_persons"])
        model, _ = prepare_for_export(ctx.model, fold_bn=bool(ctx.cfg.fold_bn),
                                      graph_rewrite=bool(ctx.cfg.graph_rewrite))
        meta = {**ctx.metadata, "format": json.dumps("last_lite.tflite/1")}
        info: dict = {"converter": _versions()}
        path = ctx.out_dir / "model.tflite"
        write_tflite(convert_fp32(model, clip_len, persons), path, meta)
        session = TFLiteSession(path.read_bytes(), ctx.threads)
        parity = check_parity(ctx.model, session, ctx.parity_x, float(ctx.cfg.parity.atol), "test")
        parity["split"] = ctx.extra["parity"]["split"]
        info["fp32"] = {"file": path.name, "parity_vs_pytorch": parity, "ops": session.ops()}
        if not parity["passed"]:
            ctx.failures.append(f"TFLite FP32 differs from PyTorch by {parity['max_abs_diff']:.2e} > "
                                f"{parity['atol']:.0e}")
        ctx.add_runner("tflite_fp32", path, session)
        if opts.get("int8", True):
            calib = opts.calibration
            batches = calibration_batches(ctx.dm.calibration_dataloader(int(calib.samples), int(calib.seed)))
            data, qinfo = convert_int8(model, clip_len, persons, batches,
                                       per_channel=bool(opts.get("per_channel", True)))
            q_path = ctx.out_dir / "model_int8.tflite"
            write_tflite(data, q_path, meta)
            q_session = TFLiteSession(q_path.read_bytes(), ctx.threads)
            ref, got = session_logits(session, ctx.parity_x), session_logits(q_session, ctx.parity_x)
            qinfo.update(file=q_path.name, input_dtype=str(q_session.input_dtype),
                         output_dtype=str(q_session.output_dtype), ops=q_session.ops(),
                         max_abs_diff_vs_fp32=float(np.abs(ref - got).max()) if len(ref) else None,
                         top1_agreement_vs_fp32=float((ref.argmax(1) == got.argmax(1)).mean()) if len(ref) else None)
            info["int8"] = qinfo
            ctx.add_runner("tflite_int8", q_path, q_session)
        ctx.extra["tflite"] = info


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("litert-torch", "ai-edge-litert"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out
