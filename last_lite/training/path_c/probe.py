"""Path C's yardstick: the linear probe run (features of a frozen encoder, a linear classifier).

The command is ``last_lite.probe`` (a thin Hydra entry); its docstring is the user's guide.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from last_lite.data.datamodule import SkeletonDataset
from last_lite.io import atomic_write_text
from last_lite.models.profile import count_parameters
from last_lite.models.registry import build_model
from last_lite.training.checkpoints import HEAD_PREFIXES, init_from
from last_lite.training.path_c.linear_probe import extract_features, fit_linear_probe, probe_accuracy
from last_lite.training.path_c.maskclr import HEAD_MODULES
from last_lite.training.records import metrics_record, write_metrics
from last_lite.training.runner import apply_thread_count, dataset_name, model_spec_for

log = logging.getLogger(__name__)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def probe_train_indices(datamodule) -> np.ndarray:
    """The whole train split: with a hold-out validation the held-out part is train data too."""
    parts = [datamodule.train_indices]
    if datamodule.val_split == "holdout":
        parts.append(datamodule.val_indices)
    return np.sort(np.concatenate(parts)).astype(np.int64)


def run(cfg: DictConfig) -> dict:
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    apply_thread_count(cfg)
    L.seed_everything(cfg.seed, workers=True)

    dm = instantiate(cfg.data, _convert_="all")
    if dm.unlabelled:
        raise ValueError("the linear probe needs labels: set data.unlabelled=false")
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(model_spec_for(cfg.model, dm))
    loaded = None
    if cfg.get("encoder"):
        report = init_from(model, cfg.encoder)
        untouched = [n for n in report["new"] if not n.startswith(HEAD_PREFIXES)
                     and n.split(".", 1)[0] not in HEAD_MODULES]
        if untouched:
            log.warning("%d encoder tensors were not in %s and stay random: %s", len(untouched),
                        cfg.encoder, ", ".join(untouched[:6]))
        loaded = {"loaded": len(report["loaded"]), "skipped": len(report["skipped"]),
                  "encoder_left_random": len(untouched)}
    device = resolve_device(cfg.get("device"))

    train_set = SkeletonDataset(dm.store, probe_train_indices(dm), dm.clip_len, dm.max_persons,
                                train=False, transform=dm.train_transform, labelled=True)
    train_loader = DataLoader(train_set, batch_size=dm.eval_batch_size, shuffle=False,
                              num_workers=dm.num_workers)
    test_loader = dm.test_dataloader()
    if not test_loader:
        raise ValueError(f"split {dm.split!r} has no test part to score the probe on")
    t0 = time.time()
    train_x, train_y = extract_features(model, train_loader, device)
    test_x, test_y = extract_features(model, test_loader, device)
    feature_time = time.time() - t0

    p = cfg.probe
    probe = fit_linear_probe(train_x, train_y, dm.num_classes, epochs=p.epochs, lr=p.lr,
                             weight_decay=p.weight_decay, batch_size=p.get("batch_size"), seed=cfg.seed)
    train_acc = probe_accuracy(probe, train_x, train_y, dm.num_classes)
    test_acc = probe_accuracy(probe, test_x, test_y, dm.num_classes)

    record = metrics_record(
        command="probe", model=cfg.model.name, dataset=dataset_name(), top1=test_acc["top1"],
        top5=test_acc["top5"], per_class_accuracy=test_acc["per_class_accuracy"],
        class_names=dm.class_names, params=count_parameters(model), epochs=int(p.epochs),
        seed=cfg.seed, wall_time_s=time.time() - started, data_index_sha256=dm.index_checksum,
        encoder=str(cfg.encoder) if cfg.get("encoder") else None, init=loaded,
        train_top1=train_acc["top1"], num_train=len(train_y), num_test=len(test_y),
        feature_dim=int(train_x.shape[1]), feature_time_s=round(feature_time, 2),
        probe=OmegaConf.to_container(cfg.probe, resolve=True), output_dir=str(output_dir))
    write_metrics(output_dir / "metrics.json", record)

    table = Table(title=f"probe: {cfg.model.name} on {record['dataset']}")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("encoder", record["encoder"] or "random (null)")
    for key in ("top1", "top5", "train_top1"):
        table.add_row(key, f"{100 * record[key]:.2f}%")
    table.add_row("train / test", f"{record['num_train']} / {record['num_test']}")
    table.add_row("wall time", f"{record['wall_time_s']:.0f} s (features {feature_time:.0f} s)")
    Console().print(table)
    return record
