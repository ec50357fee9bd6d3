"""PyTorch -> Core ML (``mlprogram``) through ``torch.export`` and coremltools (its
``torch.jit.trace`` route fails on these models). FP16 compute precision by default, and an
INT8-weight copy (``linear_quantize_weights``, symmetric per channel). The last_lite metadata
goes into the model's ``user_defined_metadata`` (the same keys and JSON values as ONNX).
Prediction needs macOS; elsewhere the spec (inputs, outputs, metadata) is what can be checked.

Needs ``pip install -e '.[coreml]'``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

INSTALL = "pip install -e '.[coreml]'"


def missing_modules() -> list[str]:
    return [m for m in ("coremltools",) if importlib.util.find_spec(m) is None]


def can_predict() -> bool:
    """Core ML prediction runs on macOS only."""
    return sys.platform == "darwin"


def convert(model, clip_len: int, max_persons: int, metadata: Mapping[str, str], *,
            precision: str = "fp16", input_name: str = "skeleton", output_name: str = "logits",
            minimum_target: str = "iOS16"):
    """An ``MLModel`` (mlprogram) of ``model`` (an eval-mode, export-prepared network)."""
    import coremltools as ct
    import torch

    x = torch.zeros(1, int(getattr(model, "in_channels", 3)), int(clip_len), int(model.layout.num_joints),
                    int(max_persons))
    with torch.no_grad():
        program = torch.export.export(model.eval(), (x,)).run_decompositions({})
    mlmodel = ct.convert(program, convert_to="mlprogram",
                         inputs=[ct.TensorType(name=input_name, shape=tuple(x.shape))],
                         outputs=[ct.TensorType(name=output_name)],
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                         minimum_deployment_target=getattr(ct.target, minimum_target))
    set_metadata(mlmodel, metadata)
    return mlmodel


def quantize_weights(mlmodel, metadata: Mapping[str, str]):
    """INT8 weights (symmetric, per channel), activations in the model's precision."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                      granularity="per_channel"))
    out = linear_quantize_weights(mlmodel, config=config)
    set_metadata(out, metadata)
    return out


def set_metadata(mlmodel, metadata: Mapping[str, str]) -> None:
    for key, value in metadata.items():
        mlmodel.user_defined_metadata[str(key)] = str(value)
    mlmodel.author = "last_lite"
    mlmodel.short_description = "last_lite skeleton action recognition; see user_defined_metadata"


def spec_facts(mlmodel) -> dict[str, Any]:
    """Inputs, outputs (names, shapes) and the last_lite metadata read back from the spec."""
    spec = mlmodel.get_spec()
    desc = spec.description

    def arrays(items):
        return {i.name: [int(d) for d in i.type.multiArrayType.shape] for i in items}

    user = dict(desc.metadata.userDefined)
    ops: dict[str, int] = {}
    if spec.WhichOneof("Type") == "mlProgram":
        for fn in spec.mlProgram.functions.values():
            for block in fn.block_specializations.values():
                for op in block.operations:
                    ops[op.type] = ops.get(op.type, 0) + 1
    return {"inputs": arrays(desc.input), "outputs": arrays(desc.output),
            "metadata_keys": sorted(k for k in user if not k.startswith("com.github.apple")),
            "spec_version": int(spec.specificationVersion), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def decoded_metadata(mlmodel) -> dict[str, Any]:
    out = {}
    for key, value in dict(mlmodel.get_spec().description.metadata.userDefined).items():
        if key.startswith("com.github.apple"):
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def save(mlmodel, path: Path) -> None:
    """Save an ``.mlpackage`` (a folder) in place of ``path``: written beside it, then renamed.

    A folder cannot be renamed onto a non-empty one, so whatever is at ``path`` (the previous
    package, or a plain file) is first renamed aside into the temp folder and deleted with it once
    the new package is in place: ``path`` never holds a half-deleted package, and a failed rename
    puts the previous one back."""
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-") as tmp:
        staged, previous = Path(tmp) / path.name, Path(tmp) / "previous"
        mlmodel.save(str(staged))
        if os.path.lexists(path):
            os.replace(path, previous)
        try:
            os.replace(staged, path)
        except OSError:
            if os.path.lexists(previous):
                os.replace(previous, path)
            raise


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
