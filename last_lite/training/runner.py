"""The one train entry every phase shares: compose configured objects, fit, test, record.

Thin Hydra commands (``last_lite.train``, ``last_lite.distill``, ``last_lite.pretrain``) call
``run_phase`` with a function that builds their LightningModule.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from last_lite.config_checks import computed_differences, validate_run_config
from last_lite.console import quiet
from last_lite.io import atomic_write_text
from last_lite.models.profile import count_parameters
from last_lite.training.base import ClassifierPhase, PhaseModule
from last_lite.training.checkpoints import AtomicCheckpointIO, init_from, newest_checkpoint
from last_lite.training.confusion import save_confusion_matrix
from last_lite.training.precision import checkpoint_precisions, resolve_trainer_precision
from last_lite.training.records import metrics_record, write_metrics
from last_lite.training.selection import EMAWeights, hold_out_fingerprint, selection_rule

log = logging.getLogger(__name__)
quiet()

ModuleFactory = Callable[[dict, Any], PhaseModule]


def model_spec_for(model_cfg: DictConfig, datamodule) -> dict:
    """The network's spec: the model config (``_target_`` and its arguments, built by
    :func:`~last_lite.models.registry.build_model`) plus the data's classes, layout and channels."""
    spec = OmegaConf.to_container(model_cfg, resolve=True)
    spec.update(num_classes=datamodule.num_classes, layout=datamodule.layout,
                in_channels=datamodule.in_channels)
    return spec


def dataset_name() -> str:
    """The chosen ``data`` config (e.g. ``nw_ucla``), as recorded in every metrics.json."""
    try:
        return HydraConfig.get().runtime.choices.get("data", "custom")
    except ValueError:  # not running under Hydra (a test composing the config itself)
        return "custom"


def data_spec_for(datamodule) -> dict:
    """What later commands (evaluate, export, the runtime) need to know about the data.

    ``data_config`` is the run's ``data`` config with its interpolations kept (``${paths.data_dir}``
    follows ``$LAST_LITE_DATA`` where the checkpoint is evaluated): ``evaluate ckpt=...`` rebuilds
    the same source, split and test-time transform from it without any ``data.*`` override."""
    spec = {"class_names": list(datamodule.class_names), "layout": datamodule.layout,
            "clip_len": int(datamodule.clip_len), "in_channels": int(datamodule.in_channels),
            "dataset": dataset_name(), "max_persons": int(datamodule.max_persons)}
    data_config = getattr(datamodule, "data_config", None)
    if data_config is not None:
        spec["data_config"] = data_config
    return spec


def build_callbacks(cfg: DictConfig) -> list:
    """The callbacks ``cfg.callbacks`` lists (conf/callbacks/default.yaml), nothing else; a null
    entry (``~callbacks.x`` or ``callbacks.x=null``) is left out. So is a checkpoint writer that
    saves exactly when ``last_checkpoint`` does (same monitor, mode and schedule, e.g.
    ``model_checkpoint`` with ``monitor: null`` in pretrain's ``mode: min``): it would only copy
    last.ckpt, and Lightning refuses two checkpoint callbacks with one state key."""
    built = {name: instantiate(spec) for name, spec in (cfg.get("callbacks") or {}).items() if spec is not None}
    resume_writer = built.get("last_checkpoint")
    resume_key = resume_writer.state_key if isinstance(resume_writer, ModelCheckpoint) else None
    for name, callback in list(built.items()):
        if name != "last_checkpoint" and isinstance(callback, ModelCheckpoint) and callback.state_key == resume_key:
            log.info("callbacks.%s saves when last_checkpoint does (%s): left out, last.ckpt is its file",
                     name, f"monitor {callback.monitor}, mode {callback.mode}")
            del built[name]
    return list(built.values())


def build_trainer(cfg: DictConfig, precision: str | None = None) -> L.Trainer:
    """``cfg.trainer`` with its precision resolved (``auto``: training/precision.py), or ``precision``."""
    if precision is None:
        precision = resolve_trainer_precision(cfg.trainer.precision, cfg.trainer.get("accelerator", "auto"), {})
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return instantiate(cfg.trainer, precision=precision, callbacks=build_callbacks(cfg),
                       logger=loggers or False, plugins=[AtomicCheckpointIO()])


def chosen_checkpoint(trainer: L.Trainer, rule: str) -> str | None:
    """The checkpoint the resolved selection rule (``best_val`` or ``last``) picks."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    # the last.ckpt of the every-epoch writer (callbacks.last_checkpoint)
    last = next((c.best_model_path for c in trainer.checkpoint_callbacks
                 if Path(c.best_model_path).name == "last.ckpt"), None)
    if rule == "last":
        return last or callback.last_model_path or callback.best_model_path or None
    return callback.best_model_path or callback.last_model_path or last


def selected_val_top1(trainer: L.Trainer, module: ClassifierPhase, datamodule, rule: str,
                      checkpoint: str | None, val_size: int) -> float | None:
    """Validation top-1 of the checkpoint the selection rule chose; None without a validation
    split. Under ``best_val`` it is the checkpoint callback's best score; otherwise one validation
    pass of the chosen weights."""
    if val_size == 0 or checkpoint is None:
        return None
    callback = trainer.checkpoint_callback
    if rule == "best_val" and callback.monitor == "val/top1" and callback.best_model_score is not None \
            and checkpoint == callback.best_model_path:
        return float(callback.best_model_score)
    loggers, trainer.loggers = trainer.loggers, []  # the logged curves keep to the training epochs
    try:
        results = trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True,
                                   verbose=False)
    finally:
        trainer.loggers = loggers
    return float(results[0]["val/top1"])


def idle_cores() -> int:
    """Cores not busy with other work now, from the 1-minute load average (at least one)."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def apply_thread_count(cfg: DictConfig) -> int:
    """``threads=N`` sets torch's intra-op threads; ``threads=null`` takes the cores idle at start.
    On a busy machine OpenMP threads that wait for a busy core stall every kernel (two threads on
    two busy cores ran several times slower than one), so a run never asks for busy cores."""
    threads = int(cfg.threads) if cfg.get("threads") else idle_cores()
    torch.set_num_threads(threads)
    log.info("intra-op threads: %d%s", threads, "" if cfg.get("threads") else " (idle cores)")
    return threads


RESUME_NEWEST = "last"


def resume_newest(cfg: DictConfig, output_dir: Path,
                  complete: Callable[[dict], bool] | None = None) -> dict | None:
    """``ckpt_path=last``: the same command run again picks up where it stopped, so a sweep (``-m``
    with a fixed ``hydra.sweep.dir``) or a queue of runs is resumed by rerunning it. Sets
    ``cfg.ckpt_path`` to this run folder's newest checkpoint (None before its first: a fresh start)
    and returns the record of a run that already finished (its metrics.json, and ``complete(record)``
    where given), which is not rerun. A folder whose config.yaml holds another experiment is
    refused: resuming would mix the two."""
    saved = output_dir / "config.yaml"
    if saved.is_file():
        differences = computed_differences(yaml.safe_load(saved.read_text(encoding="utf-8")) or {},
                                           OmegaConf.to_container(cfg, resolve=True))
        if differences:
            raise ValueError(f"ckpt_path=last: {output_dir} holds a run of another config ("
                             + "; ".join(differences) + "). Choose another hydra.run.dir, or resume "
                             "with a changed config on purpose with ckpt_path=<its checkpoint file>")
        metrics_file = output_dir / "metrics.json"
        try:
            record = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
            if record is not None and not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except (UnicodeDecodeError, ValueError) as error:  # damaged: the run's last step writes it again
            aside = metrics_file.with_name(f"metrics.json.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            metrics_file.rename(aside)
            log.warning("ckpt_path=last: %s is damaged (%s); moved to %s, the run's last step writes it again",
                        metrics_file, error, aside.name)
            record = None
        if record is not None:
            if complete is None or complete(record):
                log.info("ckpt_path=last: %s has finished (metrics.json); nothing to do", output_dir)
                return record
            log.info("ckpt_path=last: %s finished training but not its last step; completing it", output_dir)
    checkpoints = [Path(spec.dirpath) / f"{spec.filename}.ckpt"
                   for name in ("last_checkpoint", "step_checkpoint")
                   if (spec := (cfg.get("callbacks") or {}).get(name)) is not None]
    try:  # a damaged file is named here, not deep inside Lightning's restore
        newest = newest_checkpoint(checkpoints)
    except ValueError as error:
        raise ValueError(f"ckpt_path=last: a checkpoint in {output_dir} cannot be read; move it aside to start "
                         f"the run over, or resume from another one with ckpt_path=<file> ({error})") from error
    cfg.ckpt_path = None if newest is None else str(newest)
    log.info("ckpt_path=last: %s", f"resuming from {newest}" if newest else
             f"no checkpoint in {output_dir} yet, starting from the beginning")
    return None


def run_phase(cfg: DictConfig, build_module: ModuleFactory, command: str, model_key: str = "model",
              complete: Callable[[dict], bool] | None = None) -> dict:
    """Fit the phase module, test the checkpoint chosen on validation, write metrics.json.

    ``model_key`` names the config group of the network being trained (``student`` in Path B);
    ``complete``: whether a metrics.json record is of a finished run (``ckpt_path=last``), for a
    command that writes more after this function returns.
    """
    validate_run_config(cfg, command)  # again per job: a sweep's values are set only here
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("ckpt_path") == RESUME_NEWEST and (finished := resume_newest(cfg, output_dir, complete)) is not None:
        return finished
    threads = apply_thread_count(cfg)
    # config.yaml keeps the requested precision (``auto`` stays comparable across machines, e.g. for
    # the pipeline's adoption of runs); metrics.json and the checkpoints record the resolved one.
    precision = resolve_trainer_precision(cfg.trainer.precision, cfg.trainer.get("accelerator", "auto"),
                                          checkpoint_precisions(cfg.get("ckpt_path")))
    log.info("precision: %s", precision)
    L.seed_everything(cfg.seed, workers=True)
    # Built first: under DDP every rank runs this function, and only global rank zero writes files.
    trainer = build_trainer(cfg, precision)
    if trainer.is_global_zero:
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.data_config = OmegaConf.to_container(cfg.data, resolve=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    facts = datamodule.describe()
    log.info("data: %s, layout %s, %d channels, %d classes; %d train / %d val / %d test clips",
             dataset_name(), facts["layout"] if isinstance(facts["layout"], str) else
             facts["layout"].get("name", "custom"), facts["in_channels"], facts["num_classes"],
             facts["train"], facts["val"], facts["test"])
    if facts["val"] == 0:
        trainer.limit_val_batches = 0  # no hold-out (e.g. experiment=nw_ucla_full): no empty validation loop
    module = build_module(model_spec_for(cfg[model_key], datamodule), datamodule)
    if cfg.get("init_from"):
        init_from(module.model, cfg.init_from)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    if trainer.interrupted:
        raise SystemExit("training was interrupted; resume it by running the same command with ckpt_path=last "
                         "(or ckpt_path=<output>/checkpoints/last.ckpt)")
    earlier_sittings_s = list(module.earlier_sittings_s)  # before the test's checkpoint load resets it
    val_indices = getattr(datamodule, "val_indices", None)
    val_size = 0 if val_indices is None else len(val_indices)
    rule = selection_rule(cfg.get("selection", "auto"), val_size)
    best = chosen_checkpoint(trainer, rule)
    ema = next((c for c in trainer.callbacks if isinstance(c, EMAWeights)), None)
    selection = {"rule": rule, "requested": cfg.get("selection", "auto"), "val_size": val_size,
                 "val_samples": hold_out_fingerprint(datamodule), "weights": "ema" if ema is not None else "raw"}
    if ema is not None:
        selection.update(ema_horizon_epochs=ema.horizon_epochs, ema_decay=ema.decay)
    record_extra: dict[str, Any] = {"checkpoint": best, "output_dir": str(output_dir),
                                    "val_is_test": bool(getattr(datamodule, "val_is_test", False)),
                                    "selection": selection, "threads": threads,
                                    "precision": str(trainer.precision)}
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_score is not None:
        # e.g. best_val_top1 (Path A/B) or best_val_loss (pretraining)
        record_extra[f"best_{str(callback.monitor).replace('/', '_')}"] = float(callback.best_model_score)
    if isinstance(module, ClassifierPhase):
        record_extra["selected_val_top1"] = selected_val_top1(trainer, module, datamodule, rule, best, val_size)

    top1 = top5 = per_class = None
    if cfg.get("test_after_fit", True) and isinstance(module, ClassifierPhase):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True,
                               verbose=False)[0]
        top1, top5 = results.get("test/top1"), results.get("test/top5")
        details = module.test_results()  # on every rank: torchmetrics gathers across ranks
        per_class = details["per_class_accuracy"]
        if trainer.is_global_zero:
            save_confusion_matrix(output_dir / "confusion_matrix.png", details["confusion_matrix"],
                                  datamodule.class_names,
                                  title=f"{cfg[model_key].name}: test top-1 {top1:.2%}")
        record_extra["confusion_matrix"] = details["confusion_matrix"]

    # earlier sittings: their fit time up to the checkpoint this one resumed from; this one: all of it
    wall_time_s = time.time() - started
    sittings = [*earlier_sittings_s, wall_time_s]
    record_extra.update(sittings_s=[round(s, 2) for s in sittings], wall_time_total_s=round(sum(sittings), 2))
    record = metrics_record(
        command=command, model=cfg[model_key].name, dataset=dataset_name(),
        top1=top1, top5=top5, per_class_accuracy=per_class, class_names=datamodule.class_names,
        # every parameter: a phase may freeze some (MaskCLR's unused head), the network is the same
        params=count_parameters(module.model, trainable_only=False), epochs=trainer.current_epoch, seed=cfg.seed,
        wall_time_s=wall_time_s, data_index_sha256=getattr(datamodule, "index_checksum", None),
        **record_extra)
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", record)
        print_summary(record, output_dir)
    return record


def print_summary(record: dict, output_dir: Path) -> None:
    table = Table(title=f"{record['command']}: {record['model']} on {record['dataset']}")
    for column in ("metric", "value"):
        table.add_column(column)
    for key in ("top1", "top5", "best_val_top1", "selected_val_top1"):
        if record.get(key) is not None:
            table.add_row(key, f"{100 * record[key]:.2f}%")
    if record.get("best_val_loss") is not None:
        table.add_row("best_val_loss", f"{record['best_val_loss']:.4f}")
    table.add_row("params", f"{record['params']:,}")
    table.add_row("epochs", str(record["epochs"]))
    table.add_row("wall time", f"{record['wall_time_s']:.0f} s")
    console = Console()
    console.print(table)
    files = ["metrics.json"] + (["checkpoints/"] if (output_dir / "checkpoints").is_dir() else []) \
        + (["confusion_matrix.png"] if (output_dir / "confusion_matrix.png").is_file() else [])
    console.print(f"outputs: {output_dir} ({', '.join(files)})")

