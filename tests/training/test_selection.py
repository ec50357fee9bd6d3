"""The selection rule, the EMA weights it hands on and the step schedule of the field recipe."""

import math

import pytest
import torch

from conftest import TINY_DATA, read_metrics, run_command
from last_lite.pipeline.plots import read_curves
from last_lite.training.checkpoints import load_checkpoint
from last_lite.training.schedules import step_warmup
from last_lite.training.selection import MIN_VAL_TO_RANK, selection_rule


def test_rule_ranks_epochs_only_on_a_large_hold_out():
    assert selection_rule("auto", MIN_VAL_TO_RANK) == "best_val"
    assert selection_rule("auto", MIN_VAL_TO_RANK - 1) == "last"
    assert selection_rule("auto", 0) == "last"
    assert selection_rule("best_val", 10) == "best_val" and selection_rule("last", 10**6) == "last"
    with pytest.raises(ValueError, match="selection"):
        selection_rule("best", 10)


def test_step_warmup_rises_linearly_then_drops_at_each_milestone():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = step_warmup(optimizer, total_steps=65 * 4, steps_per_epoch=4, warmup_epochs=5,
                           milestones=(50, 60), gamma=0.1)
    rates = []
    for _ in range(65 * 4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert math.isclose(rates[0], 0.1 / 20) and math.isclose(rates[19], 0.1)
    assert math.isclose(rates[199], 0.1) and math.isclose(rates[200], 0.01)
    assert math.isclose(rates[240], 0.001, rel_tol=1e-9)


def test_the_run_tests_and_hands_on_the_ema_weights(tmp_path):
    """The checkpoint the rule picks holds the averaged weights (the raw ones ride along for
    resumption), the test after fit scores those, and evaluate reads the same."""
    run_command("train", ["model=last_lite_nano", "trainer.max_epochs=2", *TINY_DATA], tmp_path / "t")
    record = read_metrics(tmp_path / "t")
    assert record["selection"]["weights"] == "ema" and 0 < record["selection"]["ema_decay"] < 1
    checkpoint = load_checkpoint(record["checkpoint"])
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if k.endswith("weight"))
    run_command("evaluate", [f"ckpt={record['checkpoint']}", *TINY_DATA[:3]], tmp_path / "e")
    assert read_metrics(tmp_path / "e")["top1"] == pytest.approx(record["top1"], abs=1e-6)
    # the chosen (last) weights validated once after fit: the last epoch's score, not logged again
    val_top1 = read_curves(tmp_path / "t" / "csv" / "metrics.csv")["val/top1"]
    assert sorted(val_top1) == [0, 1]
    assert record["selected_val_top1"] == pytest.approx(val_top1[1], abs=1e-6)


def test_the_selected_score_is_that_of_the_chosen_checkpoint_or_null_without_a_hold_out(tmp_path):
    # best.ckpt written at epoch 1 of 3 (every second epoch, no monitor): validated again
    run_command("train", ["model=last_lite_nano", "trainer.max_epochs=3", "test_after_fit=false",
                          "selection=best_val", "callbacks.model_checkpoint.monitor=null",
                          "+callbacks.model_checkpoint.every_n_epochs=2", *TINY_DATA], tmp_path / "early")
    record = read_metrics(tmp_path / "early")
    assert load_checkpoint(record["checkpoint"])["epoch"] == 1
    val_top1 = read_curves(tmp_path / "early" / "csv" / "metrics.csv")["val/top1"]
    assert record["selected_val_top1"] == pytest.approx(val_top1[1], abs=1e-6)
    assert len(record["selection"]["val_samples"]) == 16  # which clips: the pipeline compares runs by it

    ran = run_command("train", ["model=last_lite_nano", "trainer.max_epochs=1", "test_after_fit=false",
                                "data.val_fraction=0", "callbacks.model_checkpoint.monitor=null", *TINY_DATA],
                      tmp_path / "none")
    record = read_metrics(tmp_path / "none")
    assert record["selection"]["val_size"] == 0 and record["selected_val_top1"] is None
    assert record["selection"]["val_samples"] is None
    assert "across ranks is zero" not in ran.stderr  # no empty validation loop set up


def test_without_averaging_the_checkpoint_holds_the_trained_weights(tmp_path):
    run_command("train", ["model=last_lite_nano", "trainer.max_epochs=1", "test_after_fit=false",
                          "selection=best_val", "~callbacks.weight_averaging", *TINY_DATA], tmp_path)
    record = read_metrics(tmp_path)
    assert record["selection"]["weights"] == "raw"
    assert record["selected_val_top1"] == record["best_val_top1"]  # best_val: the callback's score
    assert "current_model_state" not in load_checkpoint(record["checkpoint"])


def test_validating_a_checkpoint_outside_fitting_keeps_its_weights():
    """After fit the callback still holds the average the fit ended with; ``trainer.validate`` of
    an earlier checkpoint must score that checkpoint's (already averaged) weights, not swap it in."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn
    from torch.optim.swa_utils import AveragedModel

    from last_lite.training.selection import EMAWeights

    module = torch.nn.Linear(2, 2)
    ema = EMAWeights()
    ema._average_model = AveragedModel(module)
    loaded = torch.randn(2, 2)
    with torch.no_grad():
        module.weight.copy_(loaded)
    validating = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING))
    ema.on_validation_epoch_start(validating, module)
    assert torch.equal(module.weight, loaded)
    ema.on_validation_epoch_end(validating, module)
    fitting = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    ema.on_validation_epoch_start(fitting, module)  # during fit: the average is validated
    assert not torch.equal(module.weight, loaded)
    ema.on_validation_epoch_end(fitting, module)
    assert torch.equal(module.weight, loaded)


def test_ema_warm_up_forgets_the_first_values_and_copies_integer_buffers():
    """BatchNorm's running variance of the velocity stream starts at 1 and settles near 4e-4; a
    plain EMA (decay 0.986) still held 0.03 after 250 steps, 70x too large, and a short run's
    averaged model sat at chance. The warm-up forgets the start."""
    from last_lite.training.selection import ema_update

    update = ema_update(0.986)
    running_var, batches = [torch.ones(3)], [torch.zeros(1, dtype=torch.int64)]
    for n in range(250):
        update(running_var, [torch.full((3,), 4e-4)], torch.tensor(n))
        update(batches, [torch.tensor([n + 1])], torch.tensor(n))
    assert running_var[0].max() < 1e-3 and batches[0].item() == 250
    late = [torch.zeros(1)]
    update(late, [torch.ones(1)], torch.tensor(10**6))
    assert late[0].item() == pytest.approx(1 - 0.986)  # the configured decay once warmed up
