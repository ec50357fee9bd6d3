"""``backend=onnx_int8``: ONNX Runtime static INT8 (QDQ), calibrated on training clips."""

from __future__ import annotations

from omegaconf import OmegaConf

from last_lite.export.backends import Backend
from last_lite.export.common import export_fp32, ops_run, quantize


class OnnxInt8Backend(Backend):
    name = "onnx_int8"

    def build(self, ctx) -> None:
        from last_lite.runtime.session import ort_session

        q_path = ctx.out_dir / "model_int8.onnx"
        qcfg = self.options.quantization
        src = ctx.fp32_path
        tmp_src = ctx.out_dir / ".model_int8_source.onnx"
        try:
            if qcfg.get("int8_friendly_graph", True):
                export_fp32(ctx.model, tmp_src, ctx.cfg, ctx.data_spec, ctx.metadata, int8_friendly=True)
                src = tmp_src
            qinfo = quantize(src, q_path, ctx.dm, OmegaConf.to_container(qcfg, resolve=True),
                             OmegaConf.to_container(self.options.calibration, resolve=True))
        finally:
            tmp_src.unlink(missing_ok=True)
        qinfo["int8_ops_run"], qinfo["float_ops_run"] = ops_run(q_path, ctx.threads)
        ctx.extra["quantization"] = qinfo
        ctx.add_runner("int8", q_path, ort_session(q_path, ctx.threads))
