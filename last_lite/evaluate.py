"""Evaluate a checkpoint: ``python -m last_lite.evaluate ckpt=<.ckpt or zoo .safetensors> [test_clips=5]``.

The data is the one the checkpoint was trained on: its source, split, clip length, persons and
test-time transform come from the checkpoint (``data_spec.data_config``), else from the run
folder's ``config.yaml`` beside ``checkpoints/``, else from the ``data`` config its dataset names
(zoo files: their ``zoo/index.json`` entry) with the datamodule settings the checkpoint saved.
``data=<name>`` on the command line replaces all of that; ``data.<key>=...`` overrides change one
setting of it. Writes metrics.json (top-1, top-5, per-class accuracy), confusion_matrix.png and
the confusion matrix itself into the run folder.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from last_lite.config_checks import DATA_TARGETS, check_targets, distrust
from last_lite.io import atomic_write_json
from last_lite.models.profile import count_parameters
from last_lite.training.base import ClassifierPhase
from last_lite.training.checkpoints import load_trained_model
from last_lite.training.confusion import save_confusion_matrix
from last_lite.training.records import metrics_record, write_metrics
from last_lite.training.runner import apply_thread_count, dataset_name, print_summary


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# datamodule settings a checkpoint saved that describe the evaluation (not the machine it ran on)
_DATAMODULE_KEYS = ("split", "clip_len", "max_persons", "val_fraction", "val_split", "seed",
                    "train_transform", "on_bad_values")


def load_for_evaluation(ckpt: str) -> tuple[ClassifierPhase, dict]:
    """The network of any phase's checkpoint (or of a zoo ``.safetensors``) in a classifier phase
    (test metrics), and the hparams (``model_spec``, ``data_spec``, and the datamodule's saved
    settings under ``datamodule``)."""
    if Path(ckpt).suffix == ".safetensors":
        from last_lite.zoo import load_zoo_weights

        model, entry = load_zoo_weights(ckpt)
        hparams = {"model_spec": entry["model_spec"], "data_spec": entry.get("data_spec") or {}}
    else:
        model, checkpoint = load_trained_model(ckpt)
        hparams = dict(checkpoint["hyper_parameters"])
        hparams["datamodule"] = checkpoint.get("datamodule_hyper_parameters") or {}
    module = ClassifierPhase(hparams["model_spec"])
    module.model.load_state_dict(model.state_dict())
    return module, hparams


def command_line_data() -> tuple[bool, list[str]]:
    """(whether ``data=<name>`` was given, the ``data.<key>`` keys given) on the command line."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra
        return False, []
    chosen, keys = False, []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key == "data":
            chosen = True
        elif key.startswith("data."):
            keys.append(key)
    return chosen, keys


def data_key_overrides(argv: list[str]) -> list[str]:
    """``data.<key>=v`` given as ``++data.<key>=v`` unless ``data=<name>`` is: the key belongs to the
    checkpoint's data config (read after composition), which the default ``data`` group may lack
    (``data.source.root=`` of a custom folder moved elsewhere)."""
    if any(a.split("=", 1)[0] == "data" for a in argv):
        return list(argv)
    return [f"++{a}" if a.startswith("data.") and "=" in a else a for a in argv]


def trained_data_config(ckpt: str, hparams: dict) -> tuple[dict | None, str]:
    """The ``data`` config the checkpoint was trained with, and where it was found."""
    spec = hparams.get("data_spec") or {}
    if spec.get("data_config"):
        return dict(spec["data_config"]), "the checkpoint"
    path = Path(ckpt)
    run_config = path.resolve().parent.parent / "config.yaml"
    if path.parent.name == "checkpoints" and run_config.is_file():
        data = OmegaConf.load(run_config).get("data")
        if data is not None:
            return OmegaConf.to_container(data, resolve=False), str(run_config)
    name = spec.get("dataset")
    if name and name != "custom" and (CONF_DIR / "data" / f"{name}.yaml").is_file():
        from hydra import compose

        data = OmegaConf.to_container(compose("evaluate", overrides=[f"data={name}", "ckpt=x"]).data,
                                      resolve=False)
        saved = hparams.get("datamodule") or {}
        data.update({k: saved[k] for k in _DATAMODULE_KEYS if k in saved})
        for key in ("clip_len", "max_persons"):
            if spec.get(key) is not None:
                data[key] = spec[key]
        return data, f"conf/data/{name}.yaml"
    return None, ""


def resolve_data(cfg: DictConfig, hparams: dict) -> str:
    """Set ``cfg.data`` to the data the checkpoint was trained on (unless ``data=`` was given),
    with the command line's ``data.*`` overrides applied; returns the dataset name."""
    chosen, keys = command_line_data()
    spec = hparams.get("data_spec") or {}
    if chosen:
        return dataset_name()
    data, origin = trained_data_config(str(cfg.ckpt), hparams)
    if data is None:  # an old checkpoint of custom data: the command line's data it is
        return dataset_name()
    # read from a file (the checkpoint, a run folder's config.yaml): data, not code
    check_targets(data, DATA_TARGETS, origin, "data")
    # nor can it mark a pickle as trusted: only the command line's data.source.trusted=true can
    data = copy.deepcopy(data)
    distrust(data)
    node = OmegaConf.create(data)
    for key in keys:
        OmegaConf.update(node, key[len("data."):], OmegaConf.select(cfg, key), merge=False)
    with open_dict(cfg):
        cfg.data = node
    print(f"data: as trained ({origin})" + (f", with {', '.join(keys)} from the command line" if keys else ""))
    return str(spec.get("dataset") or "custom")


def adapt_input_layout(module: ClassifierPhase, data_layout) -> None:
    """Where the data's skeleton layout differs from the model's, feed the model the data through
    the layout adapter (last_lite/adapters.py; e.g. NTU's ntu25 clips to an NW-UCLA ucla20 model);
    raises AdapterError naming both layouts where none exists."""
    import torch

    from last_lite.adapters import get_adapter

    adapter = get_adapter(data_layout, module.model.layout)
    if adapter is None:
        return
    weights = torch.as_tensor(adapter.matrix, dtype=torch.float32)
    predict = module.predict_logits

    def predict_adapted(x: torch.Tensor) -> torch.Tensor:  # (..., C, T, V, M): joints at dim -2
        return predict(torch.einsum("...vm,wv->...wm", x, weights.to(x.device, x.dtype)))

    module.predict_logits = predict_adapted
    print(f"input layout {adapter.source} adapted to the model's {adapter.target}")


def write_wrong_clips(module: ClassifierPhase, datamodule, out_dir: Path, count: int) -> list[Path]:
    """The ``count`` most confidently wrong test clips as GIFs (the model's input clip, drawn by
    last_lite/render.py with the true and predicted labels), most confident first."""
    import heapq

    import torch

    from last_lite.render import render_clip

    names = list(datamodule.class_names)
    worst: list[tuple[float, int, int, int, object]] = []
    seen = 0
    module.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            x, y = batch[0], batch[1]
            probs = torch.softmax(module.predict_logits(x), dim=-1)
            conf, pred = probs.max(dim=-1)
            for i in torch.nonzero(pred != y).flatten().tolist():
                clip = x[i, 0] if x.dim() == 6 else x[i]  # (C, T, V, M); the first of k crops
                item = (float(conf[i]), -(seen + i), int(y[i]), int(pred[i]), clip.permute(3, 1, 2, 0).cpu().numpy())
                (heapq.heappush if len(worst) < count else heapq.heappushpop)(worst, item)
            seen += len(y)
    paths = []
    layout = datamodule.layout if isinstance(datamodule.layout, str) else dict(datamodule.layout)
    for rank, (conf, neg, true, pred, clip) in enumerate(sorted(worst, reverse=True), 1):
        slug = f"{names[true]}_as_{names[pred]}".replace(" ", "-").replace("/", "-")
        paths.append(render_clip(clip, layout, out_dir / f"{rank:02d}_test{-neg}_{slug}.gif",
                                 true_label=names[true], predicted=f"{names[pred]} {conf:.2f}",
                                 title=f"test sample {-neg}", fps=12,
                                 image_coords=datamodule.coord_dims == 2))
    print(f"{len(paths)} most confidently wrong test clips: {out_dir}")
    return paths


def run(cfg: DictConfig) -> dict:
    started = time.time()
    apply_thread_count(cfg)
    output_dir = Path(cfg.paths.output_dir)
    module, hparams = load_for_evaluation(cfg.ckpt)
    dataset = resolve_data(cfg, hparams)
    datamodule = instantiate(cfg.data, _convert_="all", test_clips=cfg.test_clips)
    datamodule.prepare_data()
    datamodule.setup("test")
    if datamodule.num_classes != module.model.num_classes:
        raise ValueError(f"the checkpoint predicts {module.model.num_classes} classes but data "
                         f"'{dataset}' has {datamodule.num_classes}")
    adapt_input_layout(module, cfg.get("layout") or datamodule.layout)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_model_summary=False,
                        default_root_dir=str(output_dir))
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    details = module.test_results()
    save_confusion_matrix(output_dir / "confusion_matrix.png", details["confusion_matrix"],
                          datamodule.class_names,
                          title=f"{module.model_spec['name']}: test top-1 {results['test/top1']:.2%}")
    atomic_write_json(output_dir / "confusion_matrix.json",
                      {"class_names": list(datamodule.class_names), "matrix": details["confusion_matrix"]})
    if int(cfg.get("wrong_clips") or 0) > 0:
        write_wrong_clips(module, datamodule, output_dir / "wrong_clips", int(cfg.wrong_clips))
    record = metrics_record(
        command="evaluate", model=module.model_spec["name"], dataset=dataset,
        top1=results["test/top1"], top5=results["test/top5"],
        per_class_accuracy=details["per_class_accuracy"], class_names=datamodule.class_names,
        params=count_parameters(module.model), epochs=None, seed=None,
        wall_time_s=time.time() - started, data_index_sha256=datamodule.index_checksum,
        checkpoint=str(cfg.ckpt), test_clips=int(cfg.test_clips),
        trained_on=(hparams.get("data_spec") or {}).get("dataset"))
    write_metrics(output_dir / "metrics.json", record)
    print_summary(record, output_dir)
    return record


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    import sys

    from last_lite.config_checks import run_cli

    sys.argv[1:] = data_key_overrides(sys.argv[1:])
    run_cli(main, "evaluate")
