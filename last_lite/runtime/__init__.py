"""The edge runtime: exported ONNX model + raw skeleton frames -> action predictions.

Imports only numpy, onnxruntime and last_lite's numpy-only modules (never torch)::

    from last_lite.runtime import ActionRecognizer
    rec = ActionRecognizer("model_int8.onnx")
    for frame in frames:                 # (M, V, C) arrays or {"persons": [...]} mappings
        pred = rec.push(frame)
        if pred is not None:
            print(pred.label, pred.score, pred.latency_ms)

CLI: ``python -m last_lite.runtime --model m.onnx --input rec.skeleton`` (see docs/runtime.md).
"""

from last_lite.runtime.recognizer import ActionRecognizer, ModelInfo, Prediction, as_frame, read_model_info

__all__ = ["ActionRecognizer", "ModelInfo", "Prediction", "as_frame", "read_model_info"]
