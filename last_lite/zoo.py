"""Trained models shipped in the repository's ``zoo/``: weights as safetensors, checked by SHA-256.

``zoo/index.json`` maps a name (``<dataset>/<model>``) to its file, hash, ``model_spec`` (the
``create_model`` arguments), ``data_spec`` (classes, layout, clip length) and the run's metrics;
``load_zoo_model(name)`` rebuilds the network without training anything.

An entry may also ship exported ONNX files (``onnx_fp32``, ``onnx_int8``: file, hash, the export's
test accuracy); ``zoo_onnx(name)`` returns such a file's verified path without importing torch, so
the edge runtime takes ``--model zoo:<name>``.

``python -m last_lite.zoo add <name> <checkpoint> <metrics.json> [--export <export folder>]`` adds
one run; ``python -m last_lite.zoo from-pipeline <pipeline run folder>`` ships what a finished
decision tree deployed (each student's deployed path and the teacher, with their ONNX files).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # torch stays out of the runtime's imports (zoo_onnx)
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


def _entry(name: str, zoo_dir: Path) -> dict:
    index = zoo_index(zoo_dir)
    if name not in index:
        raise KeyError(f"no zoo model {name!r}; available: {', '.join(sorted(index))}")
    return index[name]


def _verified(zoo_dir: Path, record: Mapping[str, Any]) -> Path:
    path = zoo_dir / record["file"]
    if sha256(path) != record["sha256"]:
        raise ValueError(f"{path} does not match its SHA-256 in zoo/index.json: refusing to load it")
    return path


def zoo_entry_for_file(path: str | Path, zoo_dir: Path = ZOO_DIR) -> tuple[str, dict] | None:
    """(name, entry) of the zoo entry whose weights file is ``path`` (looked up in ``zoo_dir`` and
    in an ``index.json`` beside or above the file), or None."""
    path = Path(path).resolve()
    dirs = [zoo_dir] + [p for p in path.parents if (p / "index.json").is_file()]
    for d in dirs:
        if not (d / "index.json").is_file():
            continue
        try:
            index = zoo_index(d)
        except (ValueError, UnicodeDecodeError):  # some other program's index.json
            continue
        if not isinstance(index, dict):
            continue
        for name, entry in index.items():
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) \
                    and (d / entry["file"]).resolve() == path:
                return name, entry
    return None


def load_zoo_weights(path: str | Path, zoo_dir: Path = ZOO_DIR) -> tuple[nn.Module, dict]:
    """The model of the zoo file ``path`` (a ``.safetensors`` listed in an index.json) in eval
    mode and its entry; a file that no index lists is refused with what to pass instead."""
    from safetensors.torch import load_file

    from last_lite.models.registry import build_model

    found = zoo_entry_for_file(path, zoo_dir)
    if found is None:
        raise ValueError(f"{path} is not listed in zoo/index.json, so its model and data are unknown: "
                         f"pass a .ckpt written by a last_lite command, or a zoo file "
                         f"(e.g. zoo/nw_ucla/last_lite_small.safetensors)")
    _, entry = found
    path = Path(path)
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} does not match its SHA-256 in zoo/index.json: refusing to load it")
    model = build_model(entry["model_spec"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), entry


def load_zoo_model(name: str, zoo_dir: Path = ZOO_DIR) -> tuple[nn.Module, dict]:
    """The model ``name`` in eval mode and its index entry; refuses a file whose hash differs."""
    from safetensors.torch import load_file

    from last_lite.models.registry import build_model

    entry = _entry(name, zoo_dir)
    path = _verified(zoo_dir, entry)
    model = build_model(entry["model_spec"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), entry


def add_to_zoo(name: str, checkpoint: str | Path, metrics_file: str | Path, zoo_dir: Path = ZOO_DIR,
               source: Mapping[str, Any] | None = None) -> dict:
    """Store a run's model weights (no optimizer state) in the zoo and index them (``source``: where
    the run came from, kept in the entry)."""
    from safetensors.torch import save_file

    from last_lite.io import atomic_write, atomic_write_json
    from last_lite.training.checkpoints import load_checkpoint

    # everything read and checked before the weights file is touched: a failed add leaves the
    # entry it would replace whole (its file and its recorded hash still agree)
    ckpt = load_checkpoint(checkpoint)
    hparams = ckpt.get("hyper_parameters") or {}
    if "model_spec" not in hparams:
        raise ValueError(f"{checkpoint} records no model_spec: not a checkpoint of last_lite's train or distill")
    metrics = json.loads(Path(metrics_file).read_text())
    if metrics.get("command") == "pretrain":
        raise ValueError(f"{checkpoint} is a pretraining checkpoint, whose classifier was never trained: "
                         f"fine-tune it (train init_from=<encoder>) or distil it first, then add that run")
    index = zoo_index(zoo_dir) if (zoo_dir / "index.json").is_file() else {}
    weights = {k[len("model."):]: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    path = zoo_dir / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(weights, str(tmp)))
    index[name] = {"file": path.name if path.parent == zoo_dir else str(path.relative_to(zoo_dir)),
                   "sha256": sha256(path), "model_spec": hparams["model_spec"],
                   "data_spec": hparams.get("data_spec"),
                   "metrics": {k: metrics.get(k) for k in ("command", "dataset", "top1", "top5", "best_val_top1",
                                                          "epochs", "seed", "params", "git_commit")}}
    if source:
        index[name]["source"] = dict(source)
    atomic_write_json(zoo_dir / "index.json", index)
    return index[name]


ONNX_KINDS = ("onnx_fp32", "onnx_int8")


def zoo_onnx(name: str, kind: str = "onnx_int8", zoo_dir: Path = ZOO_DIR) -> Path:
    """The verified path of entry ``name``'s exported ONNX file (``onnx_int8`` or ``onnx_fp32``)."""
    entry = _entry(name, zoo_dir)
    if kind not in entry:
        shipped = [k for k in ONNX_KINDS if k in entry]
        raise KeyError(f"zoo model {name!r} ships no {kind} file (it has: {', '.join(shipped) or 'none'})")
    return _verified(zoo_dir, entry[kind])


def add_onnx_to_zoo(name: str, kind: str, onnx_path: str | Path, export_record: Mapping[str, Any],
                    zoo_dir: Path = ZOO_DIR) -> dict:
    """Copy an exported model into entry ``name`` (already in the zoo) with its hash and the
    export's test accuracy (``export_record``: the export's metrics.json)."""
    from last_lite.io import atomic_write, atomic_write_json

    if kind not in ONNX_KINDS:
        raise ValueError(f"kind must be one of {ONNX_KINDS}, got {kind!r}")
    index = zoo_index(zoo_dir)
    if name not in index:
        raise KeyError(f"add the weights of {name!r} (add_to_zoo) before its ONNX files")
    suffix = ".int8.onnx" if kind == "onnx_int8" else ".onnx"
    path = zoo_dir / f"{name}{suffix}"
    atomic_write(path, lambda tmp: shutil.copyfile(onnx_path, tmp))
    evaluated = ((export_record.get("evaluation") or {}).get("models") or {})
    accuracy = evaluated.get("int8" if kind == "onnx_int8" else "fp32") or {}
    index[name][kind] = {"file": str(path.relative_to(zoo_dir)), "sha256": sha256(path),
                         "bytes": path.stat().st_size, "test_top1": accuracy.get("top1")}
    atomic_write_json(zoo_dir / "index.json", index)
    return index[name][kind]


def add_export_to_zoo(name: str, export_dir: str | Path, zoo_dir: Path = ZOO_DIR) -> dict[str, dict]:
    """Both ONNX files of an export folder (``python -m last_lite.export``: its metrics.json names
    them) into entry ``name``."""
    export_dir = Path(export_dir)
    record = json.loads((export_dir / "metrics.json").read_text())
    added = {}
    for key, kind in (("fp32", "onnx_fp32"), ("int8", "onnx_int8")):
        facts = (record.get("files") or {}).get(key)
        if facts:  # the recorded path, or the same file in this folder if the folder moved
            path = Path(facts["path"])
            added[kind] = add_onnx_to_zoo(name, kind, path if path.is_file() else export_dir / path.name,
                                          record, zoo_dir)
    if not added:
        raise ValueError(f"{export_dir / 'metrics.json'} names no exported ONNX file")
    return added


def pipeline_models(run_dir: str | Path) -> list[dict[str, Any]]:
    """What a finished pipeline run (``python -m last_lite.pipeline``) shipped: each deployed
    student and the teacher, as ``{model, role, path, stage, checkpoint, metrics, export}``."""
    run_dir = Path(run_dir)
    report_file, state_file = run_dir / "report.json", run_dir / "pipeline_state.json"
    if not report_file.is_file() or not state_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pipeline run folder (no report.json / pipeline_state.json)")
    report = json.loads(report_file.read_text())
    if report.get("status") != "complete":
        raise ValueError(f"the pipeline in {run_dir} is {report.get('status')!r}, not complete: "
                         f"rerun it to the end before shipping what it deployed")
    from last_lite.pipeline.state import PipelineState

    state = PipelineState(run_dir)
    stages, output = state.stages, state.output
    deployed_path = {d["deployed_stage"]: d["deployed_path"] for d in report.get("deployment") or []}
    models = []
    for entry in report["models"]:
        if not (entry.get("deployed") or entry.get("role") == "teacher"):
            continue
        stage = entry["stage"]
        export = f"export_{stage}"
        models.append({"model": entry["model"], "role": entry["role"], "stage": stage,
                       "path": deployed_path.get(stage), "checkpoint": output(stage, "checkpoint"),
                       "metrics": output(stage, "metrics"),
                       "export": output(export, "metrics").parent if export in stages
                       and stages[export].get("status") == "done" else None})
    return models


def _portable(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it: a shipped index must not name this machine's folders."""
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def add_pipeline_to_zoo(run_dir: str | Path, prefix: str | None = None, zoo_dir: Path = ZOO_DIR) -> list[dict]:
    """Ship :func:`pipeline_models` as ``<prefix>/<model>`` (prefix: the run's dataset)."""
    run_dir = Path(run_dir).resolve()
    prefix = prefix or json.loads((run_dir / "report.json").read_text()).get("dataset")
    if not prefix:
        raise ValueError("the pipeline report names no dataset: pass a prefix (--prefix)")
    shipped = []
    for m in pipeline_models(run_dir):
        name = f"{prefix}/{m['model']}"
        source = {"pipeline": _portable(run_dir, zoo_dir.parent), "stage": m["stage"], "role": m["role"],
                  "path": m["path"]}
        add_to_zoo(name, m["checkpoint"], m["metrics"], zoo_dir, source=source)
        onnx = add_export_to_zoo(name, m["export"], zoo_dir) if m["export"] else {}
        shipped.append({"name": name, **source, **{k: v["test_top1"] for k, v in onnx.items()}})
    return shipped


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m last_lite.zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, default=ZOO_DIR, help="the zoo folder (default: the repository's zoo/)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add one run's weights (and its export's ONNX files)")
    add.add_argument("name", help="<dataset>/<model>, e.g. my_clips/last_lite_small")
    add.add_argument("checkpoint", type=Path, help="a .ckpt written by train / distill")
    add.add_argument("metrics", type=Path, help="the run's metrics.json")
    add.add_argument("--export", type=Path, help="an export folder (python -m last_lite.export out_dir=...)")
    ship = commands.add_parser("from-pipeline", help="ship what a finished pipeline deployed, and its teacher")
    ship.add_argument("run_dir", type=Path, help="the pipeline's run folder (hydra.run.dir)")
    ship.add_argument("--prefix", help="entry names <prefix>/<model> (default: the run's dataset)")
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            add_to_zoo(args.name, args.checkpoint, args.metrics, args.zoo)
            onnx = add_export_to_zoo(args.name, args.export, args.zoo) if args.export else {}
            rows = [{"name": args.name, **{k: v["test_top1"] for k, v in onnx.items()}}]
        else:
            rows = add_pipeline_to_zoo(args.run_dir, args.prefix, args.zoo)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"zoo: {exc}") from None
    for row in rows:
        extra = ", ".join(f"{k} {v:.2%}" for k, v in row.items() if k.startswith("onnx") and v is not None)
        where = f" ({row['role']}, {row['stage']})" if "stage" in row else ""
        print(f"{row['name']}{where}" + (f": {extra}" if extra else ""))
    print(f"index: {args.zoo / 'index.json'}")


if __name__ == "__main__":
    main()
