"""``metrics.json``: one stable schema written by every command and read by the pipeline report."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from last_lite.io import atomic_write_json

SCHEMA = "last_lite.metrics/1"
_PACKAGES = ("last_lite", "torch", "lightning", "numpy", "onnx", "onnxruntime", "hydra-core", "torchmetrics")


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def metrics_record(*, command: str, model: str, dataset: str, top1: float | None, top5: float | None,
                   per_class_accuracy: Sequence[float] | None, class_names: Sequence[str] | None,
                   params: int, epochs: int | None, seed: int | None, wall_time_s: float,
                   data_index_sha256: str | None, **extra: Any) -> dict[str, Any]:
    """The record; accuracies are fractions in [0, 1]. ``extra`` carries command-specific keys."""
    per_class = None
    if per_class_accuracy is not None:
        names = list(class_names or [str(i) for i in range(len(per_class_accuracy))])
        # None: a class with no test sample (no accuracy to report)
        per_class = {name: None if acc is None else float(acc) for name, acc in zip(names, per_class_accuracy)}
    return {
        "schema": SCHEMA,
        "command": command,
        "model": model,
        "dataset": dataset,
        "top1": None if top1 is None else float(top1),
        "top5": None if top5 is None else float(top5),
        "per_class_accuracy": per_class,
        "params": int(params),
        "epochs": epochs,
        "seed": seed,
        "wall_time_s": round(float(wall_time_s), 2),
        "git_commit": git_commit(Path(__file__).parent),
        "versions": package_versions(),
        "data_index_sha256": data_index_sha256,
        **extra,
    }


def write_metrics(path: str | Path, record: dict[str, Any]) -> Path:
    return atomic_write_json(path, record)
