"""The decision rules of the pipeline, on hand-made metrics records (no training)."""

import json
from pathlib import Path

import pytest

from last_lite.pipeline.plots import pareto_front
from last_lite.pipeline.state import PipelineState, Stage, StageRunner, changed_keys, pretrain_outputs, rebase
from last_lite.pipeline.tree import choose_best, path_c_decision, teacher_gate

T = {"teacher_min_val_top1": 0.75, "max_gap_to_reference": 0.03, "student_floor": {"last_lite_small": 0.85}}
REF = {"label": "EfficientGCN-B0, trained here", "top1": 0.88}


def test_teacher_gate_is_strictly_above_the_validation_threshold():
    assert teacher_gate({"best_val_top1": 0.76, "top1": 0.1}, T).outcome == "pass"
    stop = teacher_gate({"best_val_top1": 0.75, "top1": 0.99}, T)  # test top-1 never decides
    assert stop.outcome == "stop" and "not above 75.00%" in stop.reason
    assert teacher_gate({"top1": 0.9}, T).outcome == "stop"  # no validation accuracy
    assert "IS its test split" in teacher_gate({"best_val_top1": 0.9, "val_is_test": True}, T).reason


def test_path_c_rule_in_order():
    small, nano = "last_lite_small", "last_lite_nano"
    assert path_c_decision(small, 0.88, REF, T).outcome == "skip_c"          # at the reference
    assert path_c_decision(nano, 0.95, REF, T).outcome == "skip_c"           # above it
    below = path_c_decision(nano, 0.80, REF, T)                               # 8 points below
    assert below.outcome == "run_c" and "more than 3.00 points" in below.reason
    assert path_c_decision(nano, 0.86, REF, T).outcome == "skip_c"           # 2 below, no floor
    floor = path_c_decision(small, 0.85, {**REF, "top1": 0.87}, T)           # 2 below, at its floor
    assert floor.outcome == "run_c" and "floor 85.00%" in floor.reason
    assert path_c_decision(small, 0.86, REF, T).outcome == "skip_c"          # 2 below, above floor
    # exactly 3 points below is not "more than 3" (0.88 - 0.85 is 0.030000000000000027 in floats)
    assert path_c_decision(nano, 0.85, REF, T).outcome == "skip_c"
    # float32 metrics: 0.85 is stored as 0.8500000238418579, still "at or below 85%"
    assert path_c_decision(small, 0.8500000238418579, {**REF, "top1": 0.87}, T).outcome == "run_c"
    with pytest.raises(ValueError, match="test top-1 is missing"):
        path_c_decision(nano, None, REF, T)


def test_the_deployed_checkpoint_is_chosen_on_validation_ties_to_the_earlier_path():
    b, c = "distill_x", "distill_x_maskclr"
    assert choose_best("x", {b: {"best_val_top1": 0.7, "top1": 0.9},
                             c: {"best_val_top1": 0.8, "top1": 0.1}}).values["chosen"] == c
    assert choose_best("x", {b: {"best_val_top1": 0.8}, c: {"best_val_top1": 0.8}}).values["chosen"] == b


def test_pareto_front_and_identity_diff():
    assert pareto_front([(1, 0.5), (2, 0.4), (3, 0.9), (0.5, 0.1)]) == [(0.5, 0.1), (1, 0.5), (3, 0.9)]
    old = {"config": {"trainer": {"max_epochs": 1}, "seed": 0}}
    assert changed_keys(old, {"config": {"trainer": {"max_epochs": 2}, "seed": 0}}) == ["config.trainer.max_epochs"]


def test_recorded_paths_follow_a_moved_run_folder(tmp_path):
    stage_dir = tmp_path / "copy" / "teacher"
    assert rebase("/old/run/teacher/checkpoints/best.ckpt", "/old/run/teacher", stage_dir) == \
        stage_dir / "checkpoints" / "best.ckpt"
    # a pretraining run whose metrics.json does not name its encoder yet is not finished
    assert pretrain_outputs({"output_dir": "/x"}, stage_dir)["encoder"] == stage_dir / "encoder.safetensors"


def test_a_stage_without_its_outputs_is_not_done_and_a_failed_command_is_recorded(tmp_path):
    state = PipelineState(tmp_path)
    calls = []

    def runner(argv, log_path, cwd, on_start):
        calls.append(argv)
        on_start(12345678)
        run_dir = Path(argv[-1].split("=", 1)[1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"output_dir": str(run_dir)}))
        return 0 if len(calls) > 1 else 3

    stages = StageRunner(state, identity=lambda s: {"x": 1}, runner=runner)
    stage = Stage("pre", "pretrain", ["model=a"], required_outputs=pretrain_outputs)
    with pytest.raises(Exception, match="exit code 3"):
        stages.ensure(stage)
    assert state.stages["pre"]["status"] == "failed"
    with pytest.raises(Exception, match="no complete outputs"):  # exit 0 but no encoder
        stages.ensure(stage)
    assert state.stages["pre"]["status"] == "failed"
    assert len(list((tmp_path / "_aside").iterdir())) == 1  # the first attempt's folder, moved aside
    (tmp_path / "pre" / "encoder.safetensors").write_bytes(b"")
    state.stages["pre"]["status"] = "done"  # as if it had finished
    state.stages["pre"]["outputs"] = {}
    assert stages.ensure(stage)["last_action"] == "reused" and len(calls) == 2
