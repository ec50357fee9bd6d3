"""``backend=ort``: the ONNX Runtime mobile format (``.ort`` flatbuffers, for ORT Mobile and minimal
builds) of the FP32 model and, by default, of the INT8 QDQ model of ``backend=onnx_int8``, plus the
``required_operators.config`` a reduced ORT build takes (``--include_ops_by_config``). Each
``.ort`` file keeps the metadata and gets its own SHA-256; both run in ONNX Runtime here, so they
are checked against the ``.onnx`` files and evaluated on the test split like them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from last_lite.export.backends.onnx_int8 import OnnxInt8Backend


class OrtMobileBackend(OnnxInt8Backend):
    name = "ort"

    def build(self, ctx) -> None:
        from last_lite.runtime.session import ort_session, session_logits

        sources = {"ort_fp32": ctx.fp32_path}
        if self.options.get("int8", True):
            super().build(ctx)  # model_int8.onnx, calibrated on training clips, runner "int8"
            sources["ort_int8"] = ctx.out_dir / "model_int8.onnx"
        platform = self.options.get("target_platform") or None
        converted = convert_to_ort(list(sources.values()), ctx.out_dir, platform)
        info: dict = {"target_platform": platform, "optimization": "Fixed (all)",
                      "required_operators": str(converted["config"].name), "files": {}}
        for name, src in sources.items():
            path, integrity = converted["files"][src.name], converted["sha256"][src.name]
            session = ort_session(path, ctx.threads)
            ref = ctx.runners["int8" if name == "ort_int8" else "fp32"]
            a, b = session_logits(ref, ctx.parity_x), session_logits(session, ctx.parity_x)
            diff = float(np.abs(a - b).max()) if len(a) else 0.0
            info["files"][name] = {"file": path.name, "source": src.name, "sha256": integrity,
                                   "max_abs_diff_vs_onnx": diff,
                                   "top1_agreement_vs_onnx": float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else None}
            if diff > float(self.options.get("atol", 1e-4)):
                ctx.failures.append(f"{path.name} differs from {src.name} by {diff:.2e} > "
                                    f"{float(self.options.get('atol', 1e-4)):.0e}")
            ctx.add_runner(name, path, session)
        info["required_operators_config"] = converted["config"].read_text()
        ctx.extra["ort_mobile"] = info


def convert_to_ort(paths: list[Path], out_dir: Path, target_platform: str | None = None) -> dict:
    """``paths`` (.onnx) -> ``out_dir``/<stem>.ort and one ``out_dir/required_operators.config``
    for all of them (ONNX Runtime's ``convert_onnx_models_to_ort``, fixed optimisations).
    Returns ``{"files": {onnx name: .ort path}, "sha256": {onnx name: the .ort's own hash, None
    when it carries no integrity field}, "config": path}``."""
    import contextlib
    import io

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from last_lite.runtime.integrity import PREFIX, stamp

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ort-") as tmp:
        stage, dest = Path(tmp) / "in", Path(tmp) / "out"
        stage.mkdir()
        for p in paths:
            shutil.copyfile(p, stage / p.name)
        with contextlib.redirect_stdout(io.StringIO()):
            convert_onnx_models_to_ort(stage, output_dir=dest, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=target_platform)
        result: dict = {"files": {}, "sha256": {}}
        for p in paths:
            made = dest / (p.stem + ".ort")
            # the .ort carries its source's hash until stamped: stamped here, before it takes its
            # final name, so no reader ever finds a file under that name that fails its own check
            result["sha256"][p.name] = stamp(made) if PREFIX in made.read_bytes() else None
            final = out_dir / made.name
            shutil.move(str(made), final)  # same filesystem: a rename
            result["files"][p.name] = final
        config = out_dir / "required_operators.config"
        shutil.move(str(dest / "required_operators.config"), config)
        result["config"] = config
    return result
