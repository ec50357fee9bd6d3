"""Loading weights safely: Lightning checkpoints with ``weights_only=True``, or safetensors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch.plugins.io import TorchCheckpointIO

from last_lite.io import atomic_write

log = logging.getLogger(__name__)

# Parameter-name prefixes of classifier heads, re-initialised when the class count differs.
HEAD_PREFIXES = ("classifier.", "fc.", "head.")
# Hyper-parameters only MaskCLR pretraining saves (training/path_c/maskclr.py): its head is untrained.
PRETRAINING_HPARAMS = ("mask_ratio", "recon_weight", "clr_weight")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every local filesystem.

    Lightning's own save (``_atomic_save``: an fsspec transaction) writes the file in the system
    temp folder and then ``shutil.move``s it, which is a copy -- not atomic -- whenever TMPDIR is
    on another filesystem than the checkpoints (node-local /tmp, shared run folder). Here the file
    is written beside its target, fsynced and renamed (``last_lite.io.atomic_write``); a kill
    leaves either the old file or the new one. Remote URLs (``s3://``...) keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as a plain dict, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and friends
        raise ValueError(f"cannot load {path} as a weights-only checkpoint: {_load_failure(exc)}") from exc


def _load_failure(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to unpickle it anyway."""
    text = str(exc).partition("WeightsUnpickler error:")[2] or str(exc)
    reason = text.strip().split("\n", 1)[0] or type(exc).__name__
    if "Unsupported global" in reason:
        name = reason.split("GLOBAL ", 1)[-1].split(" was not", 1)[0]
        return (f"it holds a Python object ({name}) that only a full unpickle rebuilds, which can run any "
                "code; last_lite reads tensors and plain values only. Re-save the tensors (e.g. the "
                "state_dict) where you trust the file")
    return f"not a PyTorch checkpoint, or a damaged one ({type(exc).__name__}: {reason})"


def newest_checkpoint(candidates: list[Path]) -> Path | None:
    """Of the checkpoints that exist among ``candidates``, the one furthest on (its global step),
    e.g. the epoch-end ``last.ckpt`` or a later every-N-steps ``step.ckpt``; None when none exists.
    Each is read, so a damaged one raises ``ValueError`` naming it (before a resume trips on it)."""
    present = [Path(p) for p in candidates if Path(p).is_file()]
    return max(present, key=lambda p: int(load_checkpoint(p).get("global_step", 0)), default=None)


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a ``.safetensors`` file or a Lightning ``.ckpt`` (``model.`` prefix dropped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError: a damaged or truncated file
            raise ValueError(f"cannot load {path} as safetensors: {exc}") from exc
    state = load_checkpoint(path).get("state_dict")
    if state is None:
        raise ValueError(f"{path} has no 'state_dict'")
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def init_from(model: nn.Module, path: str | Path, strict_backbone: bool = True) -> dict[str, list[str]]:
    """Load every weight whose name and shape match; report loaded, skipped and new names.

    A classifier whose class count differs is left newly initialised (fine-tuning to a new
    dataset). With ``strict_backbone`` a shape mismatch outside the head, or no overlap at all,
    refuses the file: it was made for a different model.
    """
    source = load_model_weights(path)
    target = model.state_dict()
    loaded, skipped, mismatched = [], [], []
    for name, tensor in source.items():
        if name not in target:
            skipped.append(name)
        elif target[name].shape != tensor.shape:
            (skipped if name.startswith(HEAD_PREFIXES) else mismatched).append(name)
        else:
            loaded.append(name)
    if strict_backbone and (mismatched or not loaded):
        detail = ", ".join(f"{n}: file {tuple(source[n].shape)} vs model {tuple(target[n].shape)}"
                           for n in mismatched[:8])
        raise ValueError(f"{path} does not fit this model: "
                         + (f"shape mismatches: {detail}" if mismatched else "no parameter names in common"))
    model.load_state_dict({n: source[n] for n in loaded}, strict=False)
    new = [n for n in target if n not in set(loaded)]
    report = {"loaded": loaded, "skipped": skipped + mismatched, "new": new}
    log.info("init_from %s: loaded %d tensors, skipped %d (%s), left %d new (%s)", path, len(loaded),
             len(report["skipped"]), ", ".join(report["skipped"][:6]) or "-", len(new),
             ", ".join(new[:6]) or "-")
    return report


def load_trained_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(network in eval mode, the checkpoint dict) from any phase's checkpoint: the
    network rebuilt from ``model_spec`` and its weights (``model.`` keys) loaded strictly. The one
    checkpoint -> model step of evaluate, export and the pipeline's profile."""
    from last_lite.models.registry import build_model

    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if not hparams.get("model_spec"):
        raise ValueError(f"{path} has no hyper_parameters.model_spec: it was not written by a last_lite command")
    if all(key in hparams for key in PRETRAINING_HPARAMS):
        raise ValueError(f"{path} is a MaskCLR pretraining checkpoint: its classifier was never trained. "
                         f"Fine-tune or distill from its encoder first (train or distill with "
                         f"init_from={Path(path).resolve().parent.parent / 'encoder.safetensors'})")
    model = build_model(hparams["model_spec"])
    weights = {k[len("model."):]: v for k, v in (checkpoint.get("state_dict") or {}).items()
               if k.startswith("model.")}
    missing = [k for k in model.state_dict() if k not in weights]
    if missing:
        raise ValueError(f"{path} lacks weights for {missing[:8]}")
    model.load_state_dict(weights, strict=True)
    return model.eval(), checkpoint
