"""Trained models shipped in the repository's ``zoo/``: weights as safetensors, checked by SHA-256.

``zoo/index.json`` maps a name (``<dataset>/<model>``) to its file, hash, ``model_spec`` (the
``create_model`` arguments), ``data_spec`` (classes, layout, clip length) and the run's metrics;
``load_zoo_model(name)`` rebuilds the network without training anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch.nn as nn

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def zoo_index(zoo_dir: Path = ZOO_DIR) -> dict:
    return json.loads((zoo_dir / "index.json").read_text())


def load_zoo_model(name: str, zoo_dir: Path = ZOO_DIR) -> tuple[nn.Module, dict]:
    """The model ``name`` in eval mode and its index entry; refuses a file whose hash differs."""
    from safetensors.torch import load_file

    from last_lite.models.registry import create_model

    index = zoo_index(zoo_dir)
    if name not in index:
        raise KeyError(f"no zoo model {name!r}; available: {', '.join(sorted(index))}")
    entry = index[name]
    path = zoo_dir / entry["file"]
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} does not match its SHA-256 in zoo/index.json: refusing to load it")
    model = create_model(**entry["model_spec"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), entry


def add_to_zoo(name: str, checkpoint: str | Path, metrics_file: str | Path, zoo_dir: Path = ZOO_DIR) -> dict:
    """Store a run's model weights (no optimizer state) in the zoo and index them."""
    from safetensors.torch import save_file

    from last_lite.io import atomic_write, atomic_write_json
    from last_lite.training.checkpoints import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    weights = {k[len("model."):]: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    path = zoo_dir / f"{name}.safetensors"
    atomic_write(path, lambda tmp: save_file(weights, str(tmp)))
    metrics = json.loads(Path(metrics_file).read_text())
    index = zoo_index(zoo_dir) if (zoo_dir / "index.json").is_file() else {}
    index[name] = {"file": path.name if path.parent == zoo_dir else str(path.relative_to(zoo_dir)),
                   "sha256": sha256(path), "model_spec": ckpt["hyper_parameters"]["model_spec"],
                   "data_spec": ckpt["hyper_parameters"].get("data_spec"),
                   "metrics": {k: metrics.get(k) for k in ("command", "dataset", "top1", "top5", "best_val_top1",
                                                          "epochs", "seed", "params", "git_commit")}}
    atomic_write_json(zoo_dir / "index.json", index)
    return index[name]
