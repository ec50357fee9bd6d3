"""The decision rules of the pipeline, on hand-made metrics records and configs (no training)."""

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from last_lite.io import process_start_id
from last_lite.pipeline.__main__ import _hydra_context, stage_identity
from last_lite.pipeline.plots import pareto_front
from last_lite.pipeline.state import (AdoptionRefused, PipelineState, Stage, StageRunner, adoption_differences,
                                      available_cores, changed_keys, now, pretrain_outputs, rebase, training_outputs)
from last_lite.pipeline.tree import deploy_decision, deploy_margin, path_c_decision, teacher_gate, usable_hold_out

T = {"teacher_min_val_top1": 0.75, "max_gap_to_reference": 0.03, "student_floor": {"last_lite_small": 0.85}}
REF = {"label": "EfficientGCN-B0, trained here", "top1": 0.88}


def test_teacher_gate_is_strictly_above_the_validation_threshold():
    assert teacher_gate({"best_val_top1": 0.76, "top1": 0.1}, T).outcome == "pass"
    stop = teacher_gate({"best_val_top1": 0.75, "top1": 0.99}, T)  # test top-1 never decides
    assert stop.outcome == "stop" and "not above 75.00%" in stop.reason
    assert teacher_gate({"top1": 0.9}, T).outcome == "stop"  # no validation accuracy
    assert "IS its test split" in teacher_gate({"best_val_top1": 0.9, "val_is_test": True}, T).reason


def test_teacher_gate_reads_the_score_of_the_checkpoint_the_selection_rule_chose():
    last = {"selection": {"rule": "last", "val_size": 102}, "best_val_top1": 0.95, "selected_val_top1": 0.70}
    gate = teacher_gate(last, T)
    assert gate.outcome == "stop" and gate.values["metric"] == "selected_val_top1"
    best = {"selection": {"rule": "best_val", "val_size": 4000}, "best_val_top1": 0.80, "selected_val_top1": 0.80}
    assert teacher_gate(best, T).outcome == "pass"


def test_teacher_gate_without_a_hold_out_is_unchecked_or_stops_when_required():
    no_split = {"selection": {"rule": "last", "val_size": 0}, "selected_val_top1": None, "top1": 0.99}
    unchecked = teacher_gate(no_split, T)
    assert unchecked.outcome == "unchecked" and "without a validation split" in unchecked.reason
    stop = teacher_gate(no_split, {**T, "require_teacher_gate": True})
    assert stop.outcome == "stop" and "require_teacher_gate" in stop.reason


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


def test_path_c_is_not_tried_where_the_deploy_rule_could_never_pick_it():
    nano = "last_lite_nano"
    # 8 points below the reference, but no hold-out: the prior order [B, C, A] would deploy B
    blind = path_c_decision(nano, 0.80, REF, T, hold_out=False)
    assert blind.outcome == "skip_c" and blind.values["hold_out"] is False
    assert "deploys B ahead of C, so C could never be deployed" in blind.reason
    assert "more than 3.00 points" in blind.reason
    # C first in the prior order: it would be deployed, so it is run
    assert path_c_decision(nano, 0.80, REF, {**T, "prior_order": ["C", "B", "A"]}, hold_out=False).outcome == "run_c"
    assert path_c_decision(nano, 0.80, REF, {**T, "prior_order": ["A", "C", "B"]}, hold_out=False).outcome == "skip_c"
    # at the floor, no hold-out: the same
    assert path_c_decision("last_lite_small", 0.85, {**REF, "top1": 0.87}, T, hold_out=False).outcome == "skip_c"
    # which records give a hold-out the deploy rule can rank on
    assert usable_hold_out(scored(0.9)) and not usable_hold_out(scored(None, 0))
    assert not usable_hold_out(scored(0.9, val_is_test=True)) and not usable_hold_out(scored(None))


def scored(score, val_size=2000, rule="last", **extra):
    """A metrics record whose selection rule handed on a checkpoint scoring ``score`` on validation."""
    key = "best_val_top1" if rule == "best_val" else "selected_val_top1"
    return {"selection": {"rule": rule, "val_size": val_size}, key: score, "top1": 0.5, **extra}


def deploy(candidates, **thresholds):
    return deploy_decision("x", candidates, {**T, **thresholds})


def test_hold_outs_of_one_size_but_other_samples_do_not_rank_the_paths():
    same, other = {"val_samples": "aaaa"}, {"val_samples": "bbbb"}
    a, b = scored(0.95), scored(0.80)
    a["selection"].update(same)
    b["selection"].update(other)
    d = deploy({"A": a, "B": b})
    assert d.outcome == "B" and d.values["branch"] == "prior_order" and "other samples" in d.reason
    b["selection"].update(same)
    assert deploy({"A": a, "B": b}).outcome == "A"  # the same hold-out: A is far ahead


def test_deploy_a_standalone_student_clearly_ahead_on_a_large_hold_out():
    """The case the tree once got wrong: distilled 83.84%, standalone 88.36%."""
    d = deploy({"A": scored(0.8836), "B": scored(0.8384, top1=0.99)})
    assert d.outcome == "A" and d.values["branch"] == "hold_out"
    assert d.values["margin"] == pytest.approx(deploy_margin((0.8836 + 0.8384) / 2, 2000, 2.0), abs=1e-6)
    assert d.values["candidates"]["B"] == {"score": 0.8384, "metric": "selected_val_top1", "val_size": 2000,
                                           "val_samples": None, "val_is_test": False}
    assert "ahead of B by more than the margin" in d.reason
    # best_val runs are scored by best_val_top1
    assert deploy({"A": scored(0.8836, rule="best_val"), "B": scored(0.8384, rule="best_val")}).outcome == "A"


def test_deploy_within_the_margin_keeps_the_earlier_path_of_the_prior_order():
    # the same scores on NW-UCLA's 102 clips: 4.5 points is within ~9.7 points
    d = deploy({"A": scored(0.8836, 102), "B": scored(0.8384, 102)})
    assert d.outcome == "B" and d.values["branch"] == "within_margin" and d.values["margin"] > 0.09
    # C loses to A by more than the margin, B is within it: B
    d = deploy({"A": scored(0.90), "B": scored(0.89), "C": scored(0.85)})
    assert d.outcome == "B" and d.values["branch"] == "within_margin"
    assert deploy({"A": scored(0.90), "B": scored(0.89)}, prior_order=["A", "B", "C"]).outcome == "A"


def test_deploy_ties_go_to_the_earlier_path_and_a_better_preferred_path_wins():
    assert deploy({"A": scored(0.88), "B": scored(0.88)}).values["branch"] == "hold_out"
    assert deploy({"A": scored(0.88), "B": scored(0.88)}).outcome == "B"
    assert deploy({"A": scored(0.88), "B": scored(0.80), "C": scored(0.95)}).outcome == "C"
    # z = 0: no margin, the best score alone decides
    assert deploy({"A": scored(0.881), "B": scored(0.880)}, deploy_z=0.0).outcome == "A"


def test_deploy_without_a_usable_hold_out_follows_the_prior_order():
    no_split = deploy({"A": scored(None, 0), "B": scored(None, 0), "C": scored(None, 0)})
    assert no_split.outcome == "B" and no_split.values["branch"] == "prior_order"
    assert no_split.values["prior_order"] == ["B", "C", "A"]  # the default, from the measured gains
    assert "no validation split" in no_split.reason and no_split.values["margin"] is None
    # test top-1 never decides, even when it is the only number
    assert deploy({"A": scored(None, 0, top1=0.99), "B": scored(None, 0, top1=0.10)}).outcome == "B"
    missing = deploy({"A": scored(0.95), "B": {"top1": 0.9, "selection": {"rule": "last", "val_size": 2000}}})
    assert missing.outcome == "B" and "no validation score for B" in missing.reason
    is_test = deploy({"A": scored(0.95, val_is_test=True), "B": scored(0.50, val_is_test=True)})
    assert is_test.outcome == "B" and "is the test split" in is_test.reason
    assert "different validation splits" in deploy({"A": scored(0.95, 2000), "B": scored(0.5, 3000)}).reason
    assert deploy({"A": scored(None, 0), "B": scored(None, 0)}, prior_order=["A", "B", "C"]).outcome == "A"


def test_deploy_with_a_path_not_run_or_not_in_the_prior_order():
    # Path C skipped: the first of the paths run
    assert deploy({"A": scored(None, 0), "B": scored(None, 0)}).outcome == "B"
    assert set(deploy({"A": scored(0.9), "B": scored(0.8)}).values["candidates"]) == {"A", "B"}
    with pytest.raises(ValueError, match="lacks the paths"):
        deploy({"A": scored(0.9), "B": scored(0.8)}, prior_order=["C", "B"])


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
    with pytest.raises(Exception, match="did not write .*encoder.safetensors"):  # exit 0, no encoder
        stages.ensure(stage)
    assert state.stages["pre"]["status"] == "failed"
    assert len(list((tmp_path / "_aside").iterdir())) == 1  # the first attempt's folder, moved aside
    (tmp_path / "pre" / "encoder.safetensors").write_bytes(b"")
    state.stages["pre"]["status"] = "done"  # as if it had finished
    state.stages["pre"]["outputs"] = {}
    assert stages.ensure(stage)["last_action"] == "reused" and len(calls) == 2



def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _finish_run(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run_dir / "metrics.json").write_text(json.dumps(
        {"output_dir": str(run_dir), "checkpoint": str(run_dir / "checkpoints" / "last.ckpt")}))


def test_an_interrupted_training_stage_resumes_from_its_furthest_checkpoint_and_a_failed_one_starts_over(tmp_path):
    import torch

    state = PipelineState(tmp_path)
    calls = []

    def interrupted(argv, log_path, cwd, on_start, **kwargs):  # the session ends mid-epoch
        calls.append((argv, kwargs))
        on_start(_dead_pid())
        run_dir = Path(argv[-1].split("=", 1)[1])
        (run_dir / "checkpoints").mkdir(parents=True)
        torch.save({"global_step": 50}, run_dir / "checkpoints" / "last.ckpt")  # the last epoch's end
        torch.save({"global_step": 80}, run_dir / "checkpoints" / "step.ckpt")  # every N steps: further on
        raise KeyboardInterrupt("signal 15")

    def finishes(argv, log_path, cwd, on_start, **kwargs):
        calls.append((argv, kwargs))
        _finish_run(Path(argv[-1].split("=", 1)[1]))
        return 0

    stage = Stage("teacher", "train", ["model=a"], required_outputs=training_outputs)
    with pytest.raises(KeyboardInterrupt):
        StageRunner(state, identity=lambda s: {"x": 1}, runner=interrupted).ensure(stage)
    assert state.stages["teacher"]["status"] == "running"
    stages = StageRunner(state, identity=lambda s: {"x": 1}, runner=finishes)
    record = stages.ensure(stage)
    argv, kwargs = calls[-1]
    assert f"ckpt_path={tmp_path / 'teacher' / 'checkpoints' / 'step.ckpt'}" in argv and kwargs == {"append": True}
    assert argv[-1] == f"hydra.run.dir={tmp_path / 'teacher'}"
    assert record["status"] == "done" and record["reason"] == "resumed" and record["moved_aside"] is None
    assert record["resumed_from"] == "teacher/checkpoints/step.ckpt" and record["runs"] == 2
    assert stages.actions["teacher"] == "resumed" and not (tmp_path / "_aside").exists()
    # the resume's arguments are not the stage's identity: the record's hash is the first run's
    assert StageRunner(state, identity=lambda s: {"x": 1}, runner=finishes).ensure(stage)["last_action"] == "reused"
    # nor is how it runs or logs (execution keys, e.g. a new default logger): still the same stage
    how = {"x": 1, "logger": {"csv": {"_target_": "Other"}}, "threads": 2, "teacher": {"compile": True}}
    assert StageRunner(state, identity=lambda s: how, runner=finishes).ensure(stage)["last_action"] == "reused"

    # an interrupted run whose config changed meanwhile starts over, as do a failed one and one
    # whose checkpoint is damaged
    for change, status, damaged in (({"x": 2}, "running", False), ({"x": 1}, "failed", False),
                                    ({"x": 1}, "running", True)):
        state.stages["teacher"] = {**state.stages["teacher"], "status": status, "pid": _dead_pid(),
                                   "hash": StageRunner(state, identity=lambda s: {"x": 1}).stage_hash(stage)[0]}
        (tmp_path / "teacher" / "metrics.json").unlink()
        if damaged:
            (tmp_path / "teacher" / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
        stages = StageRunner(state, identity=lambda s, change=change: change, runner=finishes)
        record = stages.ensure(stage)
        assert not any(a.startswith("ckpt_path=") for a in calls[-1][0]) and calls[-1][1] == {}
        assert record["reason"] == "incomplete" and record["moved_aside"]
    assert len(list((tmp_path / "_aside").iterdir())) == 3


def test_a_recorded_pid_now_held_by_another_process_does_not_block_the_stage(tmp_path):
    """After a reboot a stage's recorded pid may name an unrelated process: the start id tells."""
    state = PipelineState(tmp_path)
    stage = Stage("teacher", "train", ["model=a"], required_outputs=training_outputs)

    def finishes(argv, log_path, cwd, on_start, **kwargs):
        _finish_run(Path(argv[-1].split("=", 1)[1]))
        return 0

    stages = StageRunner(state, identity=lambda s: {"x": 1}, runner=finishes)
    digest = stages.stage_hash(stage)[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if process_start_id(other.pid) is None:
            pytest.skip("no /proc on this system: a pid's start time cannot be read")
        state.stages["teacher"] = {"status": "running", "hash": digest, "pid": other.pid,
                                   "pid_start_id": process_start_id(other.pid)}
        with pytest.raises(RuntimeError, match="still running"):  # it is the stage's own process
            stages.ensure(stage)
        state.stages["teacher"]["pid_start_id"] = "another-boot:123"
        assert stages.ensure(stage)["status"] == "done"  # the same pid, another process
    finally:
        other.kill()
        other.wait()


def test_status_tells_a_running_stage_from_an_interrupted_one(tmp_path):
    from last_lite.pipeline.status import format_status, pipeline_status

    state = PipelineState(tmp_path)
    (tmp_path / "teacher" / "csv").mkdir(parents=True)
    # two epochs trained, then the test after fit (logged one epoch on) is not a training epoch
    (tmp_path / "teacher" / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,test/top1\n0,5,0.9,\n1,10,0.8,\n2,10,,0.5\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if process_start_id(proc.pid) is None:
            pytest.skip("no /proc on this system: a pid's start time cannot be read")
        state.stages["teacher"] = {"status": "running", "command": "train", "pid": proc.pid,
                                   "pid_start_id": process_start_id(proc.pid), "started_at": now(),
                                   "identity": {"config": {"trainer": {"max_epochs": 65}}}}
        state.save()
        row = pipeline_status(tmp_path)["stages"][0]
        assert (row["status"], row["epoch"], row["max_epochs"], row["next_run"]) == ("running", 2, 65, None)
        assert 0 <= row["time_s"] < 60
    finally:
        proc.kill()
        proc.wait()
    row = pipeline_status(tmp_path)["stages"][0]
    assert (row["status"], row["next_run"]) == ("interrupted", "starts over")  # no last.ckpt yet
    (tmp_path / "teacher" / "checkpoints").mkdir()
    (tmp_path / "teacher" / "checkpoints" / "last.ckpt").write_bytes(b"epoch 2")
    assert "| teacher | train | interrupted | 2/65 | - | - | resumes from checkpoints/last.ckpt |" in \
        format_status(pipeline_status(tmp_path))


def test_ensure_all_runs_independent_stages_side_by_side(tmp_path):
    state = PipelineState(tmp_path)
    lock, running, peak, argvs, started = threading.Lock(), [0], [0], {}, []
    first_two = threading.Barrier(2, timeout=60)  # broken unless a and b run at once

    def runner(argv, log_path, cwd, on_start, **kwargs):
        run_dir = Path(argv[-1].split("=", 1)[1])
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            argvs[run_dir.name] = argv
            started.append(run_dir.name)
        if run_dir.name in ("a", "b"):
            first_two.wait()
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        if run_dir.name == "bad":
            return 3
        _finish_run(run_dir)
        return 0

    stages = StageRunner(state, identity=lambda s: {"name": s.name}, runner=runner)
    names = ["a", "b", "bad", "c"]
    todo = [Stage(n, "train", ["model=m"] + (["threads=3"] if n == "c" else []), required_outputs=training_outputs)
            for n in names]
    with pytest.raises(Exception, match="stage 'bad' failed"):
        stages.ensure_all(todo, jobs=2)
    assert peak[0] == 2 and not first_two.broken  # two at a time, never more
    assert {n: state.stages[n]["status"] for n in names} == {"a": "done", "b": "done", "bad": "failed", "c": "done"}
    threads = f"threads={max(1, available_cores() // 2)}"
    assert threads in argvs["a"] and threads in argvs["b"]
    assert [a for a in argvs["c"] if a.startswith("threads=")] == ["threads=3"]  # its own setting wins
    assert sorted(started) == sorted(names)
    state.stages["bad"]["status"] = "done"  # finished stages are reused, not rerun
    _finish_run(tmp_path / "bad")
    stages.ensure_all(todo, jobs=2)
    assert sorted(started) == sorted(names) and state.stages["bad"]["last_action"] == "reused"


def test_after_an_interrupt_no_stage_starts_and_one_launched_meanwhile_is_ended(tmp_path):
    """ensure_all's workers race the interrupt: one about to launch must not start, one whose
    process started while terminate_running took its list is ended too."""
    state = PipelineState(tmp_path)
    children = []

    def launches_late(argv, log_path, cwd, on_start, **kwargs):
        stages.terminate_running()  # the interrupt lands between the record and the launch
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        children.append(child)
        on_start(child.pid)
        return child.wait(timeout=30)

    stages = StageRunner(state, identity=lambda s: {"name": s.name}, runner=launches_late)
    stages.ensure(Stage("a", "train", ["model=m"], required_outputs=training_outputs))
    assert children[0].returncode == -15  # SIGTERM'd, not left to train for hours
    assert state.stages["a"]["status"] == "running"  # so the next invocation resumes it
    with pytest.raises(KeyboardInterrupt):
        stages.ensure(Stage("b", "train", ["model=m"], required_outputs=training_outputs))
    assert len(children) == 1 and "b" not in state.stages


def test_a_running_training_stage_logs_its_epoch(tmp_path, caplog):
    def runner(argv, log_path, cwd, on_start):
        run_dir = Path(argv[-1].split("=", 1)[1])
        (run_dir / "csv").mkdir(parents=True)
        (run_dir / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n,0,\n0,9,1.5\n2,29,0.9\n")
        time.sleep(0.5)
        _finish_run(run_dir)
        return 0

    stages = StageRunner(PipelineState(tmp_path), identity=lambda s: {"trainer": {"max_epochs": 65}}, runner=runner)
    stages.progress_every_s = 0.1
    with caplog.at_level(logging.INFO, logger="last_lite.pipeline"):
        stages.ensure(Stage("teacher", "train", ["model=a"], required_outputs=training_outputs))
    assert "stage teacher: epoch 3/65" in caplog.text


DISTILL_TODAY = ["model@teacher=last_e_v3_nano", "teacher.ckpt=x.ckpt", "model@student=last_lite_nano", "kd=nano",
                 "kd.alpha=0.3", "data=synthetic"]
DISTILL_FORMER = ["teacher=last_e_v3_nano", "teacher.ckpt=x.ckpt", "student=last_lite_nano", "distill=nano",
                  "distill.alpha=0.3", "data=synthetic"]


def test_former_spellings_in_stage_overrides_compose_and_hash_as_todays(tmp_path, caplog):
    """``tree.students.<s>.overrides=[distill.alpha=0.3]``: the distill command itself rewrites the
    former spelling; the stage's identity (composed here, not by the command) reads it the same."""
    today = Stage("distill_last_lite_nano", "distill", DISTILL_TODAY)
    former = Stage("distill_last_lite_nano", "distill", DISTILL_FORMER)
    with _hydra_context(), caplog.at_level(logging.WARNING, logger="last_lite.pipeline"):
        identity = stage_identity(tmp_path, Path.cwd())
        assert identity(former) == identity(today)
        assert identity(today)["kd"]["alpha"] == 0.3
        runner = StageRunner(PipelineState(tmp_path), identity)
        assert runner.stage_hash(former) == runner.stage_hash(today)
    warned = [r.getMessage() for r in caplog.records]
    assert "stage distill_last_lite_nano: distill.alpha=0.3 is the former spelling of kd.alpha=0.3; rewritten" in warned
    assert len(warned) == 4  # once each (teacher=, student=, distill=, distill.alpha=), though composed 3 times


def test_a_run_saved_before_the_group_renames_is_adopted_under_todays_keys(tmp_path):
    """A distill run made before conf/distill/ became conf/kd/ saved its loss weights under
    ``distill:``: adopted when otherwise equal, refused naming today's key when not. A stage
    of a command without that rename (train) reads a ``distill:`` block as a difference."""
    stage = Stage("distill_last_lite_nano", "distill", DISTILL_TODAY, required_outputs=training_outputs)
    with _hydra_context():
        identity = stage_identity(tmp_path / "run", Path.cwd())
        config = identity(stage)

        def made_before(name: str, alpha: float) -> Path:
            source = tmp_path / name
            (source / "checkpoints").mkdir(parents=True)
            (source / "checkpoints" / "best.ckpt").write_bytes(b"weights")
            (source / "metrics.json").write_text(json.dumps(
                {"output_dir": str(source), "checkpoint": str(source / "checkpoints" / "best.ckpt")}))
            saved = {("distill" if k == "kd" else k): v for k, v in config.items()}
            saved["distill"] = {**saved["distill"], "alpha": alpha}
            (source / "config.yaml").write_text(yaml.safe_dump(saved))
            return source

        def runner(source: Path) -> StageRunner:
            return StageRunner(PipelineState(tmp_path / "run"), identity, adopt={stage.name: source},
                               runner=lambda *a: pytest.fail("a stage ran"))

        with pytest.raises(AdoptionRefused, match=r"kd\.alpha: stage 0\.3 vs run 0\.7"):
            runner(made_before("other", 0.7)).ensure(stage)
        assert runner(made_before("same", 0.3)).ensure(stage)["last_action"] == "adopted"
        train_cfg = identity(Stage("teacher", "train", ["model=last_e_v3_nano", "data=synthetic"]))
    teacher_dir = tmp_path / "run" / "teacher"
    assert adoption_differences(train_cfg, {**train_cfg, "distill": {"alpha": 0.3}}, teacher_dir, teacher_dir,
                                command="train") == ["distill.alpha: stage '<absent>' vs run 0.3"]
