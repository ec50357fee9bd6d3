"""Evaluate a checkpoint: ``python -m last_lite.evaluate ckpt=<.ckpt> data=nw_ucla [test_clips=5]``.

Writes metrics.json (top-1, top-5, per-class accuracy), confusion_matrix.png and the confusion
matrix itself into the run folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from last_lite.io import atomic_write_json
from last_lite.models.profile import count_parameters
from last_lite.training.base import ClassifierPhase
from last_lite.training.checkpoints import load_trained_model
from last_lite.training.confusion import save_confusion_matrix
from last_lite.training.records import metrics_record, write_metrics
from last_lite.training.runner import apply_thread_count, dataset_name, print_summary


def load_for_evaluation(ckpt: str) -> tuple[ClassifierPhase, dict]:
    """The network of any phase's checkpoint in a classifier phase (test metrics), and the
    checkpoint's hparams."""
    model, checkpoint = load_trained_model(ckpt)
    hparams = checkpoint["hyper_parameters"]
    module = ClassifierPhase(hparams["model_spec"])
    module.model.load_state_dict(model.state_dict())
    return module, hparams


def run(cfg: DictConfig) -> dict:
    started = time.time()
    apply_thread_count(cfg)
    output_dir = Path(cfg.paths.output_dir)
    module, hparams = load_for_evaluation(cfg.ckpt)
    datamodule = instantiate(cfg.data, _convert_="all", test_clips=cfg.test_clips)
    datamodule.prepare_data()
    datamodule.setup("test")
    if datamodule.num_classes != module.model.num_classes:
        raise ValueError(f"the checkpoint predicts {module.model.num_classes} classes but data "
                         f"'{dataset_name()}' has {datamodule.num_classes}")
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_model_summary=False,
                        default_root_dir=str(output_dir))
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    details = module.test_results()
    save_confusion_matrix(output_dir / "confusion_matrix.png", details["confusion_matrix"],
                          datamodule.class_names,
                          title=f"{module.model_spec['name']}: test top-1 {results['test/top1']:.2%}")
    atomic_write_json(output_dir / "confusion_matrix.json",
                      {"class_names": list(datamodule.class_names), "matrix": details["confusion_matrix"]})
    record = metrics_record(
        command="evaluate", model=module.model_spec["name"], dataset=dataset_name(),
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
    main()
