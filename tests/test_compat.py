"""Files written before the redesign keep loading: checkpoints whose hyper-parameters have no
``_target_`` (model_spec = create_model arguments, SGD dict, schedule by ``name``); the zoo's
entries (tests/test_zoo.py) are such specs too."""

import pytest
import torch

from last_lite.evaluate import load_for_evaluation
from last_lite.models.registry import create_model
from last_lite.training.checkpoints import load_trained_model
from last_lite.training.optim import build_optimizer, build_scheduler
from last_lite.training.supervised import SupervisedModule

OLD_SPEC = {"name": "last_lite_nano", "num_classes": 6, "layout": "ntu25", "in_channels": 3}
OLD_OPTIM = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}
OLD_SCHED = {"name": "step_warmup", "warmup_epochs": 5, "milestones": [50], "gamma": 0.1}


@pytest.fixture
def old_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model(**OLD_SPEC)
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 40,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_spec": OLD_SPEC, "optim": OLD_OPTIM, "sched": OLD_SCHED,
                                     "data_spec": {"clip_len": 32}}}, path)
    return path, model


def test_an_old_checkpoint_loads_into_its_network(old_checkpoint):
    path, model = old_checkpoint
    loaded, checkpoint = load_trained_model(path)
    x = torch.randn(2, 3, 16, 25, 2)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert checkpoint["epoch"] == 3
    module, hparams = load_for_evaluation(str(path))
    torch.testing.assert_close(module.model.eval()(x), model(x))
    assert hparams["model_spec"] == OLD_SPEC


def test_old_optimiser_and_schedule_hyper_parameters_still_build():
    module = SupervisedModule(OLD_SPEC, optim=OLD_OPTIM, sched=OLD_SCHED)
    optimizer = build_optimizer(module.optim_cfg, module.trainable_modules())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    scheduler = build_scheduler(module.sched_cfg, optimizer, total_steps=650, steps_per_epoch=10)
    lrs = []
    for _ in range(650):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / 50) and lrs[499] == pytest.approx(0.1) and lrs[500] == pytest.approx(0.01)
    assert build_scheduler({"name": "none"}, optimizer, 10, 1) is None
    with pytest.raises(ValueError, match="both _target_"):
        build_scheduler({"_target_": "last_lite.training.schedules.sgdr", "name": "sgdr"}, optimizer, 10, 1)
