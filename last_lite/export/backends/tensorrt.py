"""``backend=tensorrt``: a TensorRT engine (fp16 from the FP32 model, int8 from a symmetric QDQ
model), compared with ONNX Runtime on real clips. Needs ``last_lite[tensorrt]`` and a GPU."""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import OmegaConf

from last_lite.export.backends import Backend
from last_lite.export.common import parity_samples, quantize


def quantization_for_tensorrt(qcfg: Mapping[str, Any]) -> dict[str, Any]:
    """``qcfg`` (the backend's ``quantization`` options) with the biases left in float.

    ORT's quantizer otherwise stores Conv/Gemm biases as INT32 behind a DequantizeLinear, and
    TensorRT 10's ONNX parser takes only INT8/FP8/INT4 DequantizeLinear inputs: the engine build
    would fail. Forced here, so a config that drops the option cannot bring the INT32 biases back."""
    out = dict(qcfg)
    out["extra_options"] = {**dict(out.get("extra_options") or {}), "QuantizeBias": False}
    return out


class TensorRTBackend(Backend):
    name = "tensorrt"

    def require(self) -> None:
        from last_lite.export.tensorrt import TensorRTUnavailable, require_tensorrt

        try:
            require_tensorrt()
        except TensorRTUnavailable as exc:
            raise SystemExit(f"last_lite.export: {exc} Nothing was written.") from None

    def build(self, ctx) -> None:
        from last_lite.export.results import file_facts
        from last_lite.export.tensorrt import EngineRunner, build_engine, compare_with_ort
        from last_lite.runtime.session import ort_session

        tcfg = self.options
        precision = str(tcfg.precision)
        src, ref_session, info = ctx.fp32_path, ctx.sess32, {}
        if precision == "int8":
            src = ctx.out_dir / "model_trt_int8.onnx"
            qcfg = quantization_for_tensorrt(OmegaConf.to_container(tcfg.quantization, resolve=True))
            info["quantization"] = quantize(ctx.fp32_path, src, ctx.dm, qcfg,
                                            OmegaConf.to_container(tcfg.calibration, resolve=True))
            ctx.files["trt_qdq"] = file_facts(src, ctx.params)
            ref_session = ort_session(src, ctx.threads)
        spec = ctx.data_spec
        sample = (int(spec["in_channels"]), int(spec["clip_len"]),
                  int(ctx.sess32.get_inputs()[0].shape[3]), int(spec["max_persons"]))
        engine_path = ctx.out_dir / f"model_{precision}.engine"
        info.update(build_engine(src, engine_path, precision=precision, input_shape=sample,
                                 max_batch=int(tcfg.max_batch), opt_batch=int(tcfg.opt_batch),
                                 workspace_mib=int(tcfg.workspace_mib)))
        runner = EngineRunner(engine_path, device=int(tcfg.device))
        ctx.add_runner("tensorrt", engine_path, runner)
        info["device"] = runner.device_name
        x, split = parity_samples(ctx.dm, int(tcfg.compare_samples))
        cmp = compare_with_ort(runner, ref_session, x)
        cmp32 = compare_with_ort(runner, ctx.sess32, x) if precision == "int8" else cmp
        info.update(max_abs_diff=cmp["max_abs_diff"], agreement=cmp["agreement"], compared_on=split,
                    samples=cmp["samples"], vs_fp32=cmp32)
        ctx.extra["tensorrt"] = info
        if not cmp["finite"]:
            ctx.failures.append("the TensorRT engine produced non-finite logits")
        if precision != "int8" and cmp["max_abs_diff"] is not None and cmp["max_abs_diff"] > float(tcfg.max_abs_diff):
            ctx.failures.append(f"TensorRT {precision} differs from ONNX Runtime by {cmp['max_abs_diff']:.3g} "
                                f"> {float(tcfg.max_abs_diff)}")
        if cmp["agreement"] is not None and cmp["agreement"] < float(tcfg.min_agreement):
            ctx.failures.append(f"TensorRT top-1 agreement with ONNX Runtime {cmp['agreement']:.3f} < "
                                f"{float(tcfg.min_agreement)}")
