"""Every config group composes and builds what it names (in-process, Hydra's compose API).

The lightning-hydra-template check: each root config composes with its required values filled,
and each option of each group instantiates its ``_target_`` (partials completed the way the
code completes them), so a config that names something that does not exist fails here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf, open_dict

from last_lite.models.registry import build_model, list_models
from last_lite.training.distillation import DistillModule
from last_lite.training.path_c.maskclr import MaskCLRModule
from last_lite.training.optim import build_optimizer, build_scheduler
from last_lite.training.runner import build_callbacks

CONF = Path(__file__).resolve().parents[1] / "conf"
# What each root config needs on the command line (its `???` values).
REQUIRED = {"train": [], "distill": ["teacher.ckpt=x.ckpt"], "pretrain": [], "probe": [],
            "evaluate": ["ckpt=x.ckpt"], "export": ["ckpt=x.ckpt"], "pipeline": [],
            "prepare": ["raw_dir=raw", "out_dir=out"]}


def options(group: str) -> list[str]:
    """The selectable options of a group (files starting with `_` are shared bases)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def compose_cfg(root: str, overrides: list[str], tmp_path: Path):
    """The config a command would run with, resolved against tmp_path (a fresh Hydra each time)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=root, overrides=[*REQUIRED[root], *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if "paths" in cfg:
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
        del cfg["hydra"]
    return cfg


def test_every_root_config_is_listed_and_composes(tmp_path):
    roots = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert roots == sorted(REQUIRED)
    for root in roots:
        cfg = compose_cfg(root, [], tmp_path)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate(data, tmp_path):
    # the PYSKL source refuses to be built for a pickle not marked as trusted
    cfg = compose_cfg("train", [f"data={data}"] + (["data.source.trusted=true"] if data == "pyskl" else []),
                      tmp_path)
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, L.LightningDataModule)
    assert dm.clip_len == cfg.data.clip_len


@pytest.mark.parametrize("model", options("model"))
def test_model_options_build_the_network_they_name(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    direct = instantiate(cfg.model, num_classes=5, layout="ntu25")   # the config's own _target_
    spec = {**OmegaConf.to_container(cfg.model, resolve=True), "num_classes": 5, "layout": "ntu25"}
    built = build_model(spec)                                         # what checkpoints rebuild
    assert type(direct) is type(built) and cfg.model.name == model and model in list_models()
    assert [tuple(p.shape) for p in direct.parameters()] == [tuple(p.shape) for p in built.parameters()]


def test_distill_takes_teacher_and_student_from_the_model_group(tmp_path):
    cfg = compose_cfg("distill", ["model@student=last_lite_nano", "model@teacher=last_e_v3_nano"], tmp_path)
    assert cfg.student.name == "last_lite_nano" and cfg.teacher.name == "last_e_v3_nano"
    assert cfg.teacher.ckpt == "x.ckpt" and cfg.teacher.precision == "bf16"
    assert cfg.teacher._target_ == cfg.student._target_ == "last_lite.models.registry.create_model"


@pytest.mark.parametrize("optim", options("optim"))
@pytest.mark.parametrize("sched", options("sched"))
def test_optim_and_sched_options_build_an_optimiser_and_a_schedule(optim, sched, tmp_path):
    cfg = compose_cfg("train", [f"optim={optim}", f"sched={sched}"], tmp_path)
    assert cfg.optim._partial_ and cfg.sched._partial_
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optim, resolve=True), model)
    assert isinstance(optimizer, get_method(cfg.optim._target_))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.optim.weight_decay, 0.0]
    scheduler = build_scheduler(OmegaConf.to_container(cfg.sched, resolve=True), optimizer,
                                total_steps=100, steps_per_epoch=10)
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    assert 0 <= optimizer.param_groups[0]["lr"] <= cfg.optim.lr


def test_step_warmup_warms_up_linearly_then_multiplies_by_gamma_at_each_milestone(tmp_path):
    cfg = compose_cfg("train", ["sched=step_warmup", "sched.milestones=[5,8]", "sched.warmup_epochs=2"], tmp_path)
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optim, resolve=True), torch.nn.Linear(2, 2))
    scheduler = build_scheduler(OmegaConf.to_container(cfg.sched, resolve=True), optimizer, 100, 10)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / 20) and lrs[19] == pytest.approx(0.1)
    assert lrs[49] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.01) and lrs[80] == pytest.approx(0.001)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_presets_compose_and_build_their_data(experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}", "model=last_e_v3_base"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    instantiate(cfg.data, _convert_="all")
    assert callable(get_method(cfg.sched._target_)) and cfg.trainer.max_epochs > 0


def test_callbacks_are_exactly_the_configured_ones(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    callbacks = build_callbacks(cfg)
    assert [type(c).__name__ for c in callbacks] == [
        c._target_.rsplit(".", 1)[-1] for c in cfg.callbacks.values() if c is not None]
    files = sorted(c.filename for c in callbacks if isinstance(c, L.pytorch.callbacks.ModelCheckpoint))
    assert files == ["best", "last", "step"]


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_name_trainer_arguments(trainer, tmp_path):
    cfg = compose_cfg("train", [f"trainer={trainer}"], tmp_path)
    target = get_method(cfg.trainer._target_)
    params = inspect.signature(target).parameters
    assert set(cfg.trainer) - {"_target_"} <= set(params)
    if cfg.trainer.accelerator == "cpu" and cfg.trainer.get("strategy") is None:
        instantiate(cfg.trainer, logger=False, enable_progress_bar=False)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate(logger, tmp_path):
    cfg = compose_cfg("train", [f"logger={logger}"], tmp_path)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert loggers and all(isinstance(lg, L.pytorch.loggers.Logger) for lg in loggers)


@pytest.mark.parametrize("preset", options("distill"))
def test_distill_presets_are_distill_module_arguments(preset, tmp_path):
    cfg = compose_cfg("distill", [f"distill={preset}"], tmp_path)
    assert set(cfg.distill) <= set(inspect.signature(DistillModule).parameters)
    assert set(cfg.module) - {"compile_features", "max_nonfinite_steps"} <= set(inspect.signature(DistillModule).parameters)


@pytest.mark.parametrize("preset", options("pretrain"))
def test_pretrain_presets_are_maskclr_arguments(preset, tmp_path):
    cfg = compose_cfg("pretrain", [f"pretrain={preset}"], tmp_path)
    params = set(inspect.signature(MaskCLRModule).parameters) | {"max_nonfinite_steps"}
    assert set(cfg.pretrain) <= params


@pytest.mark.parametrize("backend", options("export"))
def test_export_options_name_a_backend(backend, tmp_path):
    from last_lite.export.backends import backend_for

    cfg = compose_cfg("export", [f"export={backend}"], tmp_path)
    assert backend_for(cfg).name == backend


@pytest.mark.parametrize("preset", options("pipeline"))
def test_pipeline_presets_compose(preset, tmp_path):
    cfg = compose_cfg("pipeline", [f"pipeline={preset}", "data=nw_ucla"], tmp_path)
    assert cfg.pipeline.teacher.model in list_models()
    assert all(student in list_models() for student in cfg.pipeline.students)
