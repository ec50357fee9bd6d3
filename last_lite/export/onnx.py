"""FP32 ONNX export: BatchNorm folding, metadata, checks against PyTorch.

The exported graph takes ``skeleton`` (N, C, clip_len, V, max_persons) float32 with a dynamic
batch axis and returns ``logits`` (N, num_classes). Everything the edge runtime needs to turn raw
frames into that input (class names, layout, clip length, persons, normalisation) travels in the
model's ``metadata_props`` as JSON strings (:data:`METADATA_KEYS`), so an ``.onnx`` file is the
whole deployable.

BatchNorm: an eval-mode export folds a BN that directly follows a convolution, but the LAST
family also normalises before a convolution (the stream norms), after the graph matmul
(SpatialGCN) and before the classifier. :func:`fold_batchnorm` folds all of these into the
neighbouring convolution / linear layer (or a per-channel bias) on a copy of the model, so a
LAST-Lite graph holds no ``BatchNormalization`` node at all.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from last_lite.io import atomic_write
from last_lite.runtime.integrity import KEY as INTEGRITY_KEY
from last_lite.runtime.integrity import PLACEHOLDER as INTEGRITY_PLACEHOLDER
from last_lite.runtime.integrity import stamp as stamp_integrity
from last_lite.models.registry import average_clips
from last_lite.runtime.session import ort_session, session_logits  # noqa: F401  (ort_session: re-exported)

log = logging.getLogger(__name__)

INPUT_NAME = "skeleton"
OUTPUT_NAME = "logits"
METADATA_FORMAT = "last_lite.onnx/1"
# Every value is a JSON string.
METADATA_KEYS = ("format", "model", "class_names", "layout", "clip_len", "max_persons",
                 "in_channels", "coord_dims", "normalization", "input", "model_spec", "dataset",
                 "last_lite_version")


# ------------------------------------------------------------------------------------------------
# BatchNorm folding
# ------------------------------------------------------------------------------------------------
class ChannelBias(nn.Module):
    """``x + bias`` per channel (dim 1): what is left of a BatchNorm after its scale is folded."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm: ``bn(x) = scale * x + shift`` per channel."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fuse every ``Conv2d -> BatchNorm2d`` pair inside ``seq``; returns how many."""
    n = 0
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = nn.Identity()
            n += 1
    return n


def _conv_with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    if conv.bias is not None:
        return conv
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, bias=True,
                    padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        new.bias.zero_()
    return new.train(conv.training)


def _fold_stream_fusion(module) -> int:
    """StreamFusion: per-stream BN -> concat -> 1x1 conv -> BN, all into the conv."""
    conv = _conv_with_bias(module.conv)
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        return 0
    scales, shifts = zip(*(bn_affine(bn) for bn in module.stream_norms))
    scale, shift = torch.cat(scales), torch.cat(shifts)
    with torch.no_grad():
        w = conv.weight.double()[:, :, 0, 0]                       # (Cout, Cin)
        conv.bias.copy_((conv.bias.double() + w @ shift).float())
        conv.weight.copy_((w * scale[None, :]).float()[:, :, None, None])
    module.stream_norms = nn.ModuleList(nn.Identity() for _ in module.stream_norms)
    module.conv = fuse_conv_bn_eval(conv, module.bn)
    module.bn = nn.Identity()
    return 1 + len(scales)


def _fold_spatial_gcn(module) -> int:
    """SpatialGCN: 1x1 conv (K*C) -> matmul over joints -> BN(C). The BN scale commutes with the
    joint matmul (it acts on channels) and goes into the conv's rows; the shift stays as a bias
    after the matmul (the adjacency's rows do not sum to one). Not with subset attention, whose
    input the scale would change."""
    if getattr(module, "subset_att", None) is not None or not isinstance(module.bn, nn.BatchNorm2d):
        return 0
    module.bn = _scale_subset_conv(module.conv, module.bn, module.num_subsets, module.out_channels)
    return 1


def _fold_graph_layer(module) -> int:
    """EfficientGCN's GraphLayer: project (K*C, bias) -> matmul + sum over K -> BN(C)."""
    if not isinstance(module.bn, nn.BatchNorm2d):
        return 0
    module.bn = _scale_subset_conv(module.project, module.bn, module.subsets, module.cout)
    return 1


def _scale_subset_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, k: int, c: int) -> nn.Module:
    """Fold BN's scale into a (K*C)-output conv whose subsets are summed after the joint matmul;
    return the bias that replaces the BN (its shift)."""
    scale, shift = bn_affine(bn)
    with torch.no_grad():
        w = conv.weight.double().view(k, c, -1) * scale.view(1, c, 1)
        conv.weight.copy_(w.view_as(conv.weight).float())
        if conv.bias is not None:
            conv.bias.copy_((conv.bias.double().view(k, c) * scale).view(-1).float())
    return ChannelBias(shift.float())


def _fold_head(model) -> int:
    """LASTNet: BatchNorm1d -> Dropout (identity in eval) -> Linear, into the Linear."""
    norm, fc = getattr(model, "norm", None), getattr(model, "classifier", None)
    if not isinstance(norm, nn.BatchNorm1d) or not isinstance(fc, nn.Linear):
        return 0
    scale, shift = bn_affine(norm)
    with torch.no_grad():
        w = fc.weight.double()
        bias = fc.bias.double() if fc.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        new = nn.Linear(fc.in_features, fc.out_features, bias=True)
        new.weight.copy_((w * scale[None, :]).float())
        new.bias.copy_((bias + w @ shift).float())
    model.classifier = new
    model.norm = nn.Identity()
    return 1


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with its BatchNorms folded; returns (copy, folded count)."""
    from last_lite.models.blocks import SpatialGCN, StreamFusion

    try:
        from last_lite.models.efficientgcn import GraphLayer
    except ImportError:  # pragma: no cover
        GraphLayer = ()
    model = copy.deepcopy(model).eval()
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, StreamFusion):
            folded += _fold_stream_fusion(module)
        elif isinstance(module, SpatialGCN):
            folded += _fold_spatial_gcn(module)
        elif GraphLayer and isinstance(module, GraphLayer):
            folded += _fold_graph_layer(module)
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
    folded += _fold_head(model)
    return model, folded


class ExportSpatialGCN(nn.Module):
    """A BN-folded :class:`~last_lite.models.blocks.SpatialGCN` rewritten for inference engines.

    The original computes ``conv1x1(x) -> (N*T, V*K, C) -> mixing @ . -> BN`` with a transpose
    on either side of a batched product of small matrices. Aggregating first is the same sum::

        out[c, t, i] = sum_{ci, k} W[k, c, ci] * sum_j x[ci, t, j] * A[k, j, i] + shift[c]

        z = x @ A_cat            # (N, Cin, T, V) @ (V, V*K): ONE plain float MatMul (a GEMM)
        z.reshape(N, Cin, T*V, K)
        out = Conv(kernel (1, K))(z) + shift   # the 1x1 conv and the BN, int8-friendly

    with ``A_cat[j, i*K + k] = A[k, j, i]``. No transpose is left and the BN shift becomes the
    convolution's bias. T and V are fixed at export (only the batch axis is dynamic), so the
    reshapes carry constant shapes instead of Shape/Gather chains.
    """

    def __init__(self, gcn) -> None:
        super().__init__()
        k, c = gcn.num_subsets, gcn.out_channels
        adjacency = gcn.adjacency if gcn.edge_weight is None else gcn.adjacency * gcn.edge_weight
        v = adjacency.shape[1]
        weight = gcn.conv.weight.detach()[:, :, 0, 0].reshape(k, c, -1)       # (K, C, Cin)
        self.num_subsets, self.out_channels, self.in_channels = k, c, weight.shape[2]
        self.register_buffer("mixing", adjacency.detach().permute(1, 2, 0).reshape(v, v * k).clone())
        self.conv = nn.Conv2d(self.in_channels, c, (1, k), bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(weight.permute(1, 2, 0).reshape(c, self.in_channels, 1, k))
            bias = gcn.bn.bias if isinstance(gcn.bn, ChannelBias) else torch.zeros(c)
            if gcn.conv.bias is not None:
                raise ValueError("ExportSpatialGCN needs a bias-free convolution")
            self.conv.bias.copy_(bias)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, v = int(x.shape[2]), int(x.shape[3])  # static in the exported graph
        z = torch.matmul(x, self.mixing).reshape(-1, self.in_channels, t * v, self.num_subsets)
        return self.conv(z).reshape(-1, self.out_channels, t, v)


def rewrite_graph_convs(model: nn.Module) -> int:
    """Replace every BN-folded SpatialGCN without subset attention by :class:`ExportSpatialGCN`
    (in place); returns how many."""
    from last_lite.models.blocks import SpatialGCN

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, SpatialGCN) and child.subset_att is None
                    and isinstance(child.bn, ChannelBias) and child.conv.bias is None):
                setattr(parent, name, ExportSpatialGCN(child))
                n += 1
    return n


class ScaledHardSwish(nn.Module):
    """``x * clip(x + 3, 0, 6)`` = 6 * hardswish(x); the 1/6 goes into the next convolution.

    In a QDQ model this is an integer Add (whose saturating output quantization does the clip:
    ORT drops the Clip) and an integer Mul, where ``HardSwish`` would run in float between a
    DequantizeLinear and a QuantizeLinear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x + 3.0, 0.0, 6.0)


def _is_hardswish(m: nn.Module) -> bool:
    return isinstance(m, nn.Hardswish)


def decompose_hardswish(model: nn.Module) -> int:
    """In every (BN-folded) EpSepTCN, replace the HardSwish feeding a convolution as its only
    consumer (expand -> depthwise, depthwise -> project) by :class:`ScaledHardSwish` and divide
    that convolution's weights by 6. Same function; returns how many were replaced."""
    from last_lite.models.blocks import EpSepTCN

    n = 0
    for module in model.modules():
        if not isinstance(module, EpSepTCN):
            continue
        for src, dst in ((module.expand, module.depthwise), (module.depthwise, module.project)):
            act, conv = src[len(src) - 1], dst[0]
            if _is_hardswish(act) and isinstance(conv, nn.Conv2d):
                src[len(src) - 1] = ScaledHardSwish()
                with torch.no_grad():
                    conv.weight.div_(6.0)
                n += 1
    return n


def prepare_for_export(model: nn.Module, fold_bn: bool = True, graph_rewrite: bool = True,
                       int8_friendly: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """An eval-mode copy ready for tracing: training-only parts dropped, BatchNorm folded,
    graph convolutions rewritten (:class:`ExportSpatialGCN`) and, with ``int8_friendly``
    (the graph that gets quantized), HardSwish decomposed (:func:`decompose_hardswish`).
    Every step computes the same function. Returns (model, facts)."""
    model = copy.deepcopy(model).eval()
    dropped = drop_training_parts(model)
    folded = rewritten = decomposed = 0
    if fold_bn:
        model, folded = fold_batchnorm(model)
        if graph_rewrite:
            rewritten = rewrite_graph_convs(model)
        if int8_friendly:
            decomposed = decompose_hardswish(model)
    return model, {"dropped": dropped, "batchnorm_folded": folded,
                   "graph_convs_rewritten": rewritten, "hardswish_decomposed": decomposed}


def drop_training_parts(model: nn.Module) -> list[str]:
    """Remove modules only training uses (the information-bottleneck head); returns their names."""
    dropped = []
    if getattr(model, "ib", None) is not None:
        model.ib = None
        dropped.append("ib")
    return dropped


# ------------------------------------------------------------------------------------------------
# metadata
# ------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_metadata(*, model_name: str, class_names: Iterable[str], layout: Any, clip_len: int,
                   max_persons: int, in_channels: int, coord_dims: int | None,
                   normalization: Mapping[str, Any], model_spec: Mapping[str, Any] | None = None,
                   dataset: str | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model; every value a JSON string."""
    from last_lite import __version__
    from last_lite.skeleton import get_layout

    joints = get_layout(layout).num_joints
    values = {
        "format": METADATA_FORMAT,
        "model": model_name,
        "class_names": list(class_names),
        "layout": _plain(layout),
        "clip_len": int(clip_len),
        "max_persons": int(max_persons),
        "in_channels": int(in_channels),
        "coord_dims": int(coord_dims if coord_dims is not None else min(int(in_channels), 3)),
        "normalization": _plain(dict(normalization)),
        "input": {"name": INPUT_NAME, "layout": "NCTVM", "output": OUTPUT_NAME,
                  "shape": ["batch", int(in_channels), int(clip_len), int(joints), int(max_persons)]},
        "model_spec": _plain(dict(model_spec or {})),
        "dataset": dataset,
        "last_lite_version": __version__,
    }
    return {k: json.dumps(v) for k, v in values.items()}


def read_metadata(model_or_path) -> dict[str, Any]:
    """Decoded ``metadata_props`` of an ONNX model (path or ModelProto)."""
    import onnx

    model = onnx.load(str(model_or_path), load_external_data=False) \
        if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    out = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def set_metadata(model, metadata: Mapping[str, str]) -> None:
    """Replace ``metadata_props`` keys of a ModelProto (values already JSON strings)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in keep + list(metadata.items()):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def op_counts(model_or_path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def export_onnx(model: nn.Module, path: str | Path, *, clip_len: int, max_persons: int,
                metadata: Mapping[str, str] | None = None, opset: int = 17,
                fold_bn: bool = True, graph_rewrite: bool = True, int8_friendly: bool = False,
                require_no_batchnorm: bool = False) -> dict[str, Any]:
    """Export ``model`` (see :func:`prepare_for_export`) to ``path`` atomically, with
    ``onnx.checker`` run on the result. Returns facts for the report (BatchNorm nodes left,
    folded count, op counts, opset)."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    model, facts = prepare_for_export(model, fold_bn=fold_bn, graph_rewrite=graph_rewrite,
                                      int8_friendly=int8_friendly)
    channels = int(getattr(model, "in_channels", 3))
    joints = int(model.layout.num_joints)
    dummy = torch.zeros(2, channels, int(clip_len), joints, int(max_persons))
    path = Path(path)

    def write(tmp: Path) -> None:
        raw = tmp.with_name(tmp.name + ".raw.onnx")
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # int(x.shape[i]) in the rewritten modules: T and V are static on purpose.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message="Constant folding")
                torch.onnx.export(model, (dummy,), str(raw), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                                  opset_version=int(opset), dynamo=False, do_constant_folding=True)
            proto = onnx.load(str(raw))
        finally:
            raw.unlink(missing_ok=True)
        if metadata:
            set_metadata(proto, metadata)
        proto.producer_name = "last_lite"
        proto.doc_string = "last_lite skeleton action recognition; see metadata_props"
        set_metadata(proto, {INTEGRITY_KEY: json.dumps(INTEGRITY_PLACEHOLDER)})
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        stamp_integrity(tmp)  # the file's SHA-256 into its own `integrity` field

    atomic_write(path, write)
    counts = op_counts(path)
    bn_left = counts.get("BatchNormalization", 0)
    if require_no_batchnorm and bn_left:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"{bn_left} BatchNormalization nodes remain after folding in {path.name}")
    return {"opset": int(opset), **facts, "batchnorm_nodes": bn_left,
            "op_counts": counts, "nodes": sum(counts.values())}


# ------------------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------------------
def ort_logits(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for ``x`` (N, C, T, V, M) or (N, k, C, T, V, M) (k clips, logits averaged)."""
    return session_logits(session, x, batch_size)


def torch_logits(model: nn.Module, x: np.ndarray | torch.Tensor) -> np.ndarray:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        return average_clips(model, x).numpy()
