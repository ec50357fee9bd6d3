"""Export to the edge: FP32 ONNX, ONNX Runtime INT8 (QDQ) and TensorRT engines.

    python -m last_lite.export ckpt=<run>/checkpoints/best.ckpt backend=onnx|onnx_int8|tensorrt

- :mod:`last_lite.export.onnx`: BatchNorm folding, the inference-friendly graph rewrite,
  metadata_props, ``export_onnx``, ONNX Runtime helpers;
- :mod:`last_lite.export.quantize`: static INT8 quantization (calibration on real training
  samples) and which operators ORT runs in INT8;
- :mod:`last_lite.export.tensorrt`: TensorRT 10 engine build and check (GPU only);
- :mod:`last_lite.export.results`: test-split evaluation, latency, report.json / report.md.

The deployed model is run by :mod:`last_lite.runtime` (numpy + onnxruntime only). Importing this
package imports nothing heavy; its modules import torch.
"""

BACKENDS = ("onnx", "onnx_int8", "tensorrt")

__all__ = ["BACKENDS"]
