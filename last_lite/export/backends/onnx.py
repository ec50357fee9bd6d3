"""``backend=onnx``: the FP32 ONNX model (BatchNorm folded, runtime metadata), nothing more."""

from last_lite.export.backends import Backend


class OnnxBackend(Backend):
    name = "onnx"
