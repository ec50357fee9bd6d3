"""Path C's pretraining run: MaskCLR through the shared runner, BatchNorm recalibration, the encoder file.

The command is ``last_lite.pretrain`` (a thin Hydra entry); its docstring is the user's guide.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from last_lite.training.checkpoints import load_model_weights
from last_lite.training.path_c.maskclr import (MaskCLRModule, encoder_state, recalibrate_batchnorm,
                                               save_encoder)
from last_lite.training.records import write_metrics
from last_lite.training.runner import data_spec_for, run_phase

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    if cfg.get("test_after_fit"):
        log.warning("test_after_fit=true does not apply to pretraining (no labels, no accuracy); ignored")
        with open_dict(cfg):
            cfg.test_after_fit = False
    built: dict[str, MaskCLRModule] = {}

    def build(model_spec: dict, datamodule) -> MaskCLRModule:
        options = OmegaConf.to_container(cfg.maskclr, resolve=True)
        module = MaskCLRModule(model_spec, coord_dims=datamodule.coord_dims, optim=OmegaConf.to_container(cfg.optim, resolve=True),
                               sched=OmegaConf.to_container(cfg.sched, resolve=True), data_spec=data_spec_for(datamodule), **options)
        built["module"] = module
        return module

    # metrics.json is written by run_phase, then again naming the encoder: only then is a run done
    record = run_phase(cfg, build, command="pretrain",
                       complete=lambda r: bool(r.get("encoder")) and Path(r["encoder"]).is_file())
    if "module" not in built:  # ckpt_path=last on a finished run: nothing was built
        return record
    module = built["module"]
    trainer = module.trainer
    model = module.model
    checkpoint = record.get("checkpoint")
    if checkpoint:  # the lowest val/loss; without a checkpoint callback, the final weights
        model.load_state_dict(load_model_weights(checkpoint))
    batches = cfg.get("bn_recalibration_batches", 100)
    used = 0
    if batches != 0:
        model.to(trainer.strategy.root_device)
        used = recalibrate_batchnorm(model, trainer.datamodule.train_dataloader(),
                                     None if batches is None or batches < 0 else int(batches))
        model.cpu()
    weights = encoder_state(model)
    if not trainer.is_global_zero:
        return record
    output_dir = Path(cfg.paths.output_dir)
    encoder_path = Path(cfg.get("encoder_path") or output_dir / "encoder.safetensors")
    save_encoder(weights, encoder_path,
                 metadata={"model": cfg.model.name, "layout": module.model.layout.name,
                           "in_channels": getattr(module.model, "in_channels", 3),
                           "source_checkpoint": checkpoint or "final weights"})

    metrics = trainer.callback_metrics
    record["bn_recalibration_batches"] = used
    record["final"] = {k: float(v) for k, v in metrics.items()
                       if k.startswith(("train/", "val/")) and getattr(v, "numel", lambda: 1)() == 1}
    record["encoder"] = str(encoder_path)
    record["encoder_tensors"] = len(weights)
    record["pretrain"] = OmegaConf.to_container(cfg.maskclr, resolve=True)  # the options (conf/maskclr/)
    write_metrics(output_dir / "metrics.json", record)
    log.info("encoder (%d tensors) written to %s", len(weights), encoder_path)
    return record
