"""Every config group composes and builds what it names (in-process, Hydra's compose API).

The lightning-hydra-template check: each root config composes with its required values filled,
and each option of each group instantiates its ``_target_`` (partials completed the way the
code completes them), so a config that names something that does not exist fails here.
"""

from __future__ import annotations

import inspect
import logging
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
from last_lite.training.precision import resolve_trainer_precision
from last_lite.training.runner import build_callbacks

CONF = Path(__file__).resolve().parents[1] / "conf"
# What each root config needs on the command line (its `???` values).
REQUIRED = {"train": [], "distill": ["teacher.ckpt=x.ckpt"], "pretrain": [], "probe": [],
            "evaluate": ["ckpt=x.ckpt"], "export": ["ckpt=x.ckpt"], "pipeline": [], "gains": [],
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
    assert cfg.teacher.ckpt == "x.ckpt" and cfg.teacher.precision == "auto"
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
    # the pipeline takes the same presets for its stages (make pipeline EXPERIMENT=<name>)
    compose_cfg("pipeline", ["data=nw_ucla", f"experiment={experiment}"], tmp_path)


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
        # as the runner builds it: `precision: auto` resolved first (training/precision.py)
        precision = resolve_trainer_precision(cfg.trainer.precision, cfg.trainer.accelerator, {})
        instantiate(cfg.trainer, precision=precision, logger=False, enable_progress_bar=False)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate(logger, tmp_path):
    cfg = compose_cfg("train", [f"logger={logger}"], tmp_path)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert loggers and all(isinstance(lg, L.pytorch.loggers.Logger) for lg in loggers)


@pytest.mark.parametrize("preset", options("kd"))
def test_kd_presets_are_distill_module_arguments(preset, tmp_path):
    cfg = compose_cfg("distill", [f"kd={preset}"], tmp_path)
    assert set(cfg.kd) <= set(inspect.signature(DistillModule).parameters)
    assert set(cfg.module) - {"compile_features", "max_nonfinite_steps"} <= set(inspect.signature(DistillModule).parameters)


@pytest.mark.parametrize("preset", options("maskclr"))
def test_maskclr_presets_are_maskclr_arguments(preset, tmp_path):
    cfg = compose_cfg("pretrain", [f"maskclr={preset}"], tmp_path)
    params = set(inspect.signature(MaskCLRModule).parameters) | {"max_nonfinite_steps"}
    assert set(cfg.maskclr) <= params
    MaskCLRModule({"name": "last_lite_nano", "num_classes": 4, "layout": "ntu25", "in_channels": 3},
                  **OmegaConf.to_container(cfg.maskclr, resolve=True))


@pytest.mark.parametrize("backend", options("backend"))
def test_backend_options_name_a_backend(backend, tmp_path):
    from last_lite.export.backends import backend_for

    cfg = compose_cfg("export", [f"backend={backend}"], tmp_path)
    assert backend_for(cfg).name == backend


def test_the_renamed_groups_have_options():
    """(an empty group would leave the three tests above with nothing to run)"""
    assert all(options(group) for group in ("kd", "maskclr", "backend", "tree"))


def test_no_root_config_shares_its_name_with_a_group_folder():
    """``conf/distill.yaml`` beside a ``conf/distill/`` group read as one thing (issue 21): the
    groups were renamed (kd, backend, maskclr, tree)."""
    roots = {p.stem for p in CONF.glob("*.yaml")}
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert roots and groups and roots & groups == set()


# The former spellings of renamed groups: (command, former overrides, today's overrides).
FORMER_SPELLINGS = [
    ("distill", ["distill=nano"], ["kd=nano"]),
    ("distill", ["distill.alpha=0.7", "distill.tau=2"], ["kd.alpha=0.7", "kd.tau=2"]),
    ("distill", ["+distill.extra=1", "++distill.gamma=0.2"], ["+kd.extra=1", "++kd.gamma=0.2"]),
    ("distill", ["~distill"], ["~kd"]),
    ("distill", ["student=last_lite_nano", "teacher=last_e_v3_nano"],
     ["model@student=last_lite_nano", "model@teacher=last_e_v3_nano"]),
    ("export", ["export=onnx_int8", "export.calibration.samples=8"],
     ["backend=onnx_int8", "backend.calibration.samples=8"]),
    ("export", ["export=onnx_int8", "~export.calibration"], ["backend=onnx_int8", "~backend.calibration"]),
    ("pretrain", ["pretrain=default", "pretrain.clr_weight=0.25"], ["maskclr=default", "maskclr.clr_weight=0.25"]),
    ("pipeline", ["pipeline=ntu60_xsub", "pipeline.thresholds.deploy_z=3"],
     ["tree=ntu60_xsub", "tree.thresholds.deploy_z=3"]),
    ("pipeline", ["+pipeline.thresholds.student_floor.last_lite_nano=0.8", "++pipeline.force=[teacher]",
                  "~pipeline.students.last_lite_small"],
     ["+tree.thresholds.student_floor.last_lite_nano=0.8", "++tree.force=[teacher]", "~tree.students.last_lite_small"]),
]


@pytest.mark.parametrize(("command", "former", "today"), FORMER_SPELLINGS)
def test_former_spellings_are_rewritten_with_a_warning_and_compose_the_same(command, former, today, tmp_path,
                                                                              caplog):
    from last_lite.config_checks import legacy_overrides

    with caplog.at_level(logging.WARNING, logger="last_lite.config_checks"):
        rewritten = legacy_overrides(former, command)
    assert rewritten == today
    assert legacy_overrides(today, command) == today
    warned = [r.getMessage() for r in caplog.records]
    for old, new in zip(former, today):
        if old != new:
            assert f"{old} is the former spelling of {new}; rewritten" in warned
    assert len(warned) == sum(old != new for old, new in zip(former, today))
    assert compose_cfg(command, rewritten, tmp_path) == compose_cfg(command, today, tmp_path)


def test_only_override_words_of_the_renamed_groups_are_rewritten(caplog):
    from last_lite.config_checks import legacy_overrides

    kept = ["-m", "-cn", "distill", "--cfg", "job", "teacher.ckpt=x.ckpt", "student.drop_path=0.1",
            "distillation=1", "hydra.job.name=distill", "data=nw_ucla", "kd.alpha=0.3"]
    with caplog.at_level(logging.WARNING, logger="last_lite.config_checks"):
        assert legacy_overrides(kept, "distill") == kept
        # other commands have no such groups: their keys are not touched
        assert legacy_overrides(["distill=small", "export=onnx", "pretrain.x=1", "pipeline=x"], "train") == \
            ["distill=small", "export=onnx", "pretrain.x=1", "pipeline=x"]
        # the pipeline's own keys, and the stages' overrides it passes on as values, are not touched
        pipeline_kept = ["task_name=pipeline", "hydra.job.name=pipeline", "stage_overrides=[distill.alpha=0.3]",
                         "tree.students.last_lite_nano.overrides=[distill.alpha=0.3]", "-cn", "pipeline"]
        assert legacy_overrides(pipeline_kept, "pipeline") == pipeline_kept
        # a sweep keeps its values
        assert legacy_overrides(["distill.alpha=0.3,0.5", "distill.tau=range(2,6,2)"], "distill") == \
            ["kd.alpha=0.3,0.5", "kd.tau=range(2,6,2)"]
    assert len(caplog.records) == 2


def test_summarize_puts_runs_from_before_the_rename_in_the_columns_of_new_ones(tmp_path):
    """A folder gathering a run written as ``distill.*`` (before conf/kd/) and one as ``kd.*``
    makes one table: the former keys are shown in today's spelling, values looked up under both."""
    import json

    import yaml

    from last_lite.summarize import collect

    def job(name: str, group: str, overrides: list[str], alpha: float) -> None:
        hydra_dir = tmp_path / name / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"job": {"config_name": "distill"}, "runtime": {"choices": {group: "small"}}}}))
        (hydra_dir / "config.yaml").write_text(yaml.safe_dump({group: {"alpha": alpha, "tau": 4.0}, "seed": 0}))
        (tmp_path / name / "metrics.json").write_text(json.dumps({"top1": 0.5, "best_val_top1": 0.6}))

    job("old", "distill", ["distill.tau=2", "student=last_lite_nano", "seed=1"], 0.5)
    job("new", "kd", ["kd.alpha=0.3", "model@student=last_lite_nano"], 0.3)
    columns, rows, _ = collect(tmp_path)
    assert set(columns) == {"job", "network", "kd.tau", "model@student", "seed", "kd.alpha", "test_top1", "best_val_top1",
                            "status"}
    by_job = {r["job"]: r for r in rows}
    assert by_job["old"]["kd.tau"] == "2" and by_job["old"]["kd.alpha"] == "0.5"
    assert by_job["new"]["kd.tau"] == "4" and by_job["new"]["kd.alpha"] == "0.3"  # 4.0 in its config
    assert by_job["old"]["model@student"] == by_job["new"]["model@student"] == "last_lite_nano"


@pytest.mark.parametrize("preset", options("tree"))
def test_tree_presets_compose(preset, tmp_path):
    cfg = compose_cfg("pipeline", [f"tree={preset}", "data=nw_ucla"], tmp_path)
    assert cfg.tree.teacher.model in list_models()
    assert all(student in list_models() for student in cfg.tree.students)


def test_evaluate_data_key_overrides_compose_against_the_checkpoints_data_not_the_default():
    """`evaluate ckpt=... data.source.root=<moved folder>`: the default data (synthetic) has no
    `root`, the checkpoint's custom source has; the command passes such keys with `++`."""
    from hydra.errors import ConfigCompositionException

    from last_lite.evaluate import data_key_overrides

    given = ["ckpt=x.ckpt", "data.source.root=/moved/my_clips", "data.source.trusted=true"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(ConfigCompositionException):
            compose("evaluate", overrides=given)
        cfg = compose("evaluate", overrides=data_key_overrides(given))
    assert cfg.data.source.root == "/moved/my_clips" and cfg.data.source.trusted is True
    assert data_key_overrides(["data=nw_ucla", "data.batch_size=8"]) == ["data=nw_ucla", "data.batch_size=8"]
