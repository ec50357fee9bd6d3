"""The pipeline end to end on a tiny synthetic set.

The stages (real ``python -m last_lite.<command>`` subprocesses: teacher, reference, the student
alone, distillation, MaskCLR pretraining, distillation again, INT8 export) are trained ONCE, in the
session fixture;
every other test reruns the pipeline in a copy of that folder with other thresholds or published
reference accuracies, with a stage runner that fails if any stage would run again.
"""

import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_DATA, run_command
from last_lite.pipeline.state import available_cores

REPO = Path(__file__).resolve().parents[2]
STAGE = [*TINY_DATA, "trainer.max_epochs=1", "data.source.num_classes=4"]
EXPORT = ["latency.repeats=3", "latency.warmup=1", "parity.samples=8", "backend.calibration.samples=16"]
NANO = "last_lite_nano"
A, B, C, PRE = f"standalone_{NANO}", f"distill_{NANO}", f"distill_{NANO}_maskclr", f"pretrain_{NANO}"


def _hydra_list(items) -> str:
    return "[" + ",".join(f'"{i}"' for i in items) + "]"


BASE = ["tree.teacher.model=last_e_v3_nano", f"~tree.students.{'last_lite_small'}",
        f"stage_overrides={_hydra_list(STAGE)}", f"tree.export.overrides={_hydra_list(EXPORT)}",
        "tree.export.baselines=[]", "tree.thresholds.teacher_min_val_top1=0.0",
        # a 4-clip hold-out is noise: the prior order deploys (B, or C once run, so that deploying and
        # exporting Path C's student is exercised), whatever the scores
        "tree.thresholds.deploy_z=100", "tree.thresholds.prior_order=[C,B,A]"]


def compose_cfg(run_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("pipeline", overrides=[*BASE, f"run_dir={run_dir}", *overrides])


def pipeline(run_dir: Path, *overrides: str, runner=None) -> dict:
    from last_lite.pipeline.__main__ import run

    with contextlib.chdir(REPO):
        return run(compose_cfg(run_dir, *overrides), runner_fn=runner)


def forbid(argv, *args, **kwargs):
    raise AssertionError(f"a stage ran again: {' '.join(argv)}")


def published(top1: float) -> str:
    return f"tree.reference.published.top1={top1}"


def metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "metrics.json").read_text())


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "pipeline_state.json").read_text())


def decision(report: dict, prefix: str) -> dict:
    return next(d for d in report["decisions"] if d["id"].startswith(prefix))


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> dict:
    """One run folder holding every stage, built by three invocations of the pipeline."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    # 1. a published reference at 0%: Path A, Path B, Path C skipped, export
    first = pipeline(run_dir, published(0.0))
    # 2. a published reference at 100%: the nano student is far below it -> Path C
    second = pipeline(run_dir, published(1.0))
    # 3. the CLI with the default reference: EfficientGCN-B0 trained with the same recipe
    proc = run_command("pipeline", BASE, run_dir)
    third = json.loads((run_dir / "report.json").read_text())
    return {"dir": run_dir, "first": first, "second": second, "third": third, "cli": proc}


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished["dir"], target)
    return target


def test_the_first_runs_walk_the_tree_and_reuse_finished_stages(finished):
    first, second, third = finished["first"], finished["second"], finished["third"]
    assert first["status"] == "complete"
    assert decision(first, "gate_A")["outcome"] == "pass"
    assert decision(first, "path_C")["outcome"] == "skip_c"
    assert first["invocation"]["actions"] == {"teacher": "ran", A: "ran", B: "ran", f"export_{B}": "ran"}
    deploy = decision(first, "deploy:")
    assert deploy["outcome"] == "B" and deploy["values"]["branch"] in ("hold_out", "within_margin")
    for path, stage in (("A", A), ("B", B)):  # scored by the selection rule's own checkpoint
        m = metrics(finished["dir"], stage)
        assert m["selection"]["rule"] == "last" and m["selected_val_top1"] is not None
        assert deploy["values"]["candidates"][path]["score"] == m["selected_val_top1"]
        assert deploy["values"]["candidates"][path]["val_size"] == m["selection"]["val_size"] == 4

    assert decision(second, "path_C")["outcome"] == "run_c"
    actions = second["invocation"]["actions"]
    assert actions["teacher"] == actions[A] == actions[B] == "reused" and actions[PRE] == actions[C] == "ran"
    assert decision(second, "deploy:")["outcome"] == "C" and actions[f"export_{C}"] == "ran"

    # the trained reference: only it ran; the rule used the test top-1 of the metrics files
    assert third["status"] == "complete" and third["reference"]["published"] is False
    ran = {k for k, v in third["invocation"]["actions"].items() if v != "reused"}
    assert ran == {"reference"}
    rule = decision(third, "path_C")
    assert rule["values"]["student_top1"] == metrics(finished["dir"], B)["top1"]
    assert rule["values"]["reference_top1"] == metrics(finished["dir"], "reference")["top1"]
    assert "pipeline: complete" in finished["cli"].stdout


@pytest.mark.parametrize("case", ["stop_at_A", "skip_c_at_reference", "skip_c_within_gap",
                                  "run_c_below_by_more_than_gap", "run_c_at_floor"])
def test_each_branch_by_thresholds_without_retraining(finished, copy, case):
    student = metrics(finished["dir"], B)["top1"]
    teacher_val = metrics(finished["dir"], "teacher")["selected_val_top1"]
    overrides, expected = {
        "stop_at_A": ([f"tree.thresholds.teacher_min_val_top1={teacher_val}"], "stop"),
        "skip_c_at_reference": ([published(student)], "skip_c"),
        "skip_c_within_gap": ([published(student + 0.02)], "skip_c"),
        "run_c_below_by_more_than_gap": ([published(student + 0.0625)], "run_c"),
        "run_c_at_floor": ([published(student + 0.02), f"+tree.thresholds.student_floor.{NANO}={student}"],
                           "run_c"),
    }[case]
    report = pipeline(copy, *overrides, runner=forbid)
    assert set(report["invocation"]["actions"].values()) == {"reused"}
    if expected == "stop":
        assert report["status"] == "stopped" and report["stages"][0]["stage"] == "teacher"
        assert len(report["stages"]) == 1 and "is not above" in report["stop_reason"]
        assert decision(report, "gate_A")["values"]["teacher_val_top1"] == teacher_val
        return
    rule = decision(report, "path_C")
    assert rule["outcome"] == expected, rule["reason"]
    assert {"skip_c_at_reference": "at or above", "skip_c_within_gap": "within 3.00 points",
            "run_c_below_by_more_than_gap": "more than 3.00 points",
            "run_c_at_floor": "floor"}[case] in rule["reason"]
    assert "published" in rule["reason"] and rule["values"]["reference_published"] is True
    stages = [s["stage"] for s in report["stages"]]
    assert (C in stages) == (expected == "run_c")


def test_rerun_reuses_every_stage_and_hashes_ignore_thresholds(finished, copy):
    from last_lite.pipeline.__main__ import _hydra_context, stage_identity
    from last_lite.pipeline.state import PipelineState, StageRunner
    from last_lite.pipeline.tree import Tree

    before = state(copy)
    report = pipeline(copy, published(1.0), "tree.thresholds.max_gap_to_reference=0.5", runner=forbid)
    after = state(copy)
    assert set(report["invocation"]["actions"].values()) == {"reused"}
    assert {k: v["hash"] for k, v in after["stages"].items()} == {k: v["hash"] for k, v in before["stages"].items()}
    assert len(after["invocations"]) == len(before["invocations"]) + 1

    def hashes(*overrides):
        cfg = compose_cfg(copy, *overrides)
        st = PipelineState(copy)
        runner = StageRunner(st, stage_identity(copy, REPO), cwd=REPO, runner=forbid)
        tree = Tree(cfg, st, runner)
        with contextlib.chdir(REPO), _hydra_context():
            return [runner.stage_hash(s)[0] for s in (tree.teacher_stage(), tree.distill_stage(NANO))]

    recorded = [after["stages"]["teacher"]["hash"], after["stages"][B]["hash"]]
    assert hashes("tree.thresholds.teacher_min_val_top1=0.9", published(0.5)) == recorded
    changed = hashes(f"stage_overrides={_hydra_list([*STAGE, 'seed=1'])}")
    assert changed[0] != recorded[0] and changed[1] != recorded[1]


def test_report_numbers_equal_the_stages_metrics_files(finished):
    run_dir, report = finished["dir"], finished["third"]
    rows = {r["stage"]: r for r in report["models"]}
    assert {"teacher", "reference", A, B} <= set(rows) and (rows[A]["path"], rows[B]["path"]) == ("A", "B")
    for row in rows.values():
        m = json.loads((run_dir / row["metrics_file"]).read_text())
        assert (row["params"], row["test_top1"], row["val_top1"], row["test_top5"]) == \
            (m["params"], m["top1"], m["selected_val_top1"], m["top5"])
        assert row["flops"] > 0
    deployed = [r for r in report["models"] if r["deployed"]]
    path = decision(report, "deploy:")["outcome"]
    assert len(deployed) == 1 and deployed[0]["stage"] == {"A": A, "B": B, "C": C}[path] == \
        report["deployment"][0]["deployed_stage"]
    ex = deployed[0]["export"]
    rep = json.loads((run_dir / ex["report_file"]).read_text())
    assert ex["int8"]["test_top1"] == rep["evaluation"]["models"]["int8"]["top1"]
    assert ex["fp32"]["test_top1"] == rep["evaluation"]["models"]["fp32"]["top1"]
    assert ex["int8"]["bytes"] == rep["files"]["int8"]["bytes"] == Path(rep["files"]["int8"]["path"]).stat().st_size
    assert ex["int8"]["latency_p50_ms"] == rep["latency"]["int8"]["p50_ms"] and rep["latency"]["int8"]["batch"] == 1
    assert report["reference"]["top1"] == metrics(run_dir, "reference")["top1"]
    for name in ("training_curves", "pareto_params", "pareto_latency", f"confusion_{NANO}"):
        assert (run_dir / report["plots"][name]).stat().st_size > 1000
    md = (run_dir / "report.md").read_text()
    assert f"{100 * deployed[0]['test_top1']:.2f}%" in md and f"{ex['int8']['bytes'] / 1024:.1f} KiB" in md
    assert "Which accuracy decides" in md and "validation top-1" in report["accuracy_choice"]
    assert "## Deployment" in md and report["deployment"][0]["reason"] in md
    walls = {s["stage"]: s["wall_time_s"] for s in report["stages"]}
    teacher = metrics(run_dir, "teacher")  # trained in one sitting: its total is its wall time
    assert walls["teacher"] == teacher["wall_time_total_s"] == teacher["wall_time_s"] == teacher["sittings_s"][0]
    assert report["total_stage_time_s"] == pytest.approx(sum(walls.values()))
    assert f"Summed stage time: {report['total_stage_time_s']:,.0f} s" in md


def test_force_redoes_a_stage_and_every_stage_that_consumed_it(finished, copy):
    calls = []

    def rerun(argv, log_path, cwd, on_start):  # a stand-in: the finished stage's files, a new wall time
        stage_dir = Path(argv[-1].split("=", 1)[1])
        calls.append(stage_dir.name)
        shutil.copytree(finished["dir"] / stage_dir.name, stage_dir)
        m = json.loads((stage_dir / "metrics.json").read_text())
        m["wall_time_s"] += 1
        (stage_dir / "metrics.json").write_text(json.dumps(m))
        return 0

    report = pipeline(copy, published(0.0), "tree.force=[teacher]", runner=rerun)
    assert calls == ["teacher", B, f"export_{B}"]
    assert report["invocation"]["actions"] == {"teacher": "forced", A: "reused", B: "ran", f"export_{B}": "ran"}
    assert [p.name.split(".")[:2] for p in sorted((copy / "_aside").iterdir())] == \
        [[B, "stale"], [f"export_{B}", "stale"], ["teacher", "forced"]]
    assert "inputs." in " ".join(state(copy)["stages"][B]["changed"])  # why it was stale


def test_an_interrupted_stage_restarts_cleanly(finished, copy):
    export = f"export_{B}"
    st = state(copy)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st["stages"][export].update(status="running", pid=dead.pid)  # killed mid-stage
    (copy / "pipeline_state.json").write_text(json.dumps(st))
    (copy / export / "metrics.json").unlink()
    (copy / export / "report.json").unlink()
    report = pipeline(copy, published(0.0))
    assert report["invocation"]["actions"] == {"teacher": "reused", A: "reused", B: "reused", export: "ran"}
    record = state(copy)["stages"][export]
    assert record["status"] == "done" and record["reason"] == "incomplete"
    aside = copy / record["moved_aside"]
    assert aside.is_dir() and not (aside / "metrics.json").exists()
    new = json.loads((copy / export / "report.json").read_text())
    assert new["evaluation"]["models"]["int8"]["top1"] == \
        json.loads((finished["dir"] / export / "report.json").read_text())["evaluation"]["models"]["int8"]["top1"]
    assert report["models"][-1]["export"]["int8"]["test_top1"] == new["evaluation"]["models"]["int8"]["top1"]


def test_an_interrupted_invocation_reports_where_it_stopped_and_status_shows_it(finished, copy):
    import torch

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def interrupted(argv, log_path, cwd, on_start, **kwargs):  # the session ends during epoch 2
        stage_dir = Path(argv[-1].split("=", 1)[1])
        on_start(dead.pid)
        (stage_dir / "csv").mkdir(parents=True)
        (stage_dir / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,3,0.9\n")
        (stage_dir / "checkpoints").mkdir()
        torch.save({"global_step": 3}, stage_dir / "checkpoints" / "last.ckpt")
        raise KeyboardInterrupt("signal 15")

    with pytest.raises(KeyboardInterrupt):
        pipeline(copy, published(0.0), f"tree.force=[{B}]", runner=interrupted)
    report = json.loads((copy / "report.json").read_text())
    assert report["status"] == state(copy)["last_invocation"]["status"] == "interrupted"
    assert {s["stage"]: s["status"] for s in report["stages"]}[B] == "interrupted at epoch 1/1"
    assert "rerun the same command to continue" in (copy / "report.md").read_text()

    shown = subprocess.run([sys.executable, "-m", "last_lite.pipeline.status", str(copy)], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in shown.splitlines() if line.startswith("| ") and not line.startswith("| stage")}
    assert rows[B][:3] == ["distill", "interrupted", "1/1"]
    assert rows[B][5] == "resumes from checkpoints/last.ckpt"
    assert rows["teacher"][1] == "done" and rows["teacher"][3] == f"{100 * metrics(copy, 'teacher')['top1']:.2f}%"
    assert rows[f"export_{B}"][1] == "done" and "last ended invocation: interrupted" in shown
    missing = subprocess.run([sys.executable, "-m", "last_lite.pipeline.status", str(copy / "nothing")],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0 and "no pipeline run in" in missing.stderr

    # the same command again continues the redo: the forced stage resumes, it is not forced over
    calls = []

    def finishes(argv, log_path, cwd, on_start, **kwargs):
        stage_dir = Path(argv[-1].split("=", 1)[1])
        calls.append(argv)
        shutil.copytree(finished["dir"] / stage_dir.name, stage_dir, dirs_exist_ok=True)
        return 0

    report = pipeline(copy, published(0.0), f"tree.force=[{B}]", runner=finishes)
    assert report["status"] == "complete" and report["invocation"]["actions"][B] == "resumed"
    assert any(a.startswith("ckpt_path=") and a.endswith("last.ckpt") for a in calls[0])
    # once the tree has completed, the same tree.force redoes the stage again
    report = pipeline(copy, published(0.0), f"tree.force=[{B}]", runner=finishes)
    assert report["invocation"]["actions"][B] == "forced"


def test_an_error_stopping_the_tree_is_in_its_report_and_the_zoo_will_not_ship_it(copy):
    from last_lite.zoo import pipeline_models

    def broken(argv, log_path, cwd, on_start, **kwargs):
        raise OSError("No space left on device")

    assert json.loads((copy / "report.json").read_text())["status"] == "complete"
    with pytest.raises(OSError, match="No space left"):
        pipeline(copy, published(0.0), f"tree.force=[{B}]", runner=broken)
    report = json.loads((copy / "report.json").read_text())
    assert report["status"] == "error" and "OSError: No space left on device" in report["failures"][0]
    with pytest.raises(ValueError, match="'error', not complete"):
        pipeline_models(copy)


@pytest.mark.parametrize("override, message", [
    ("tree.force=[techer]", r"tree.force names no stage of this tree: \['techer'\]"),
    ("++tree.adopt.standalone_last_lite_nan=/x", "tree.adopt names no stage"),
    ("tree.thresholds.prior_order=[B,A]", "must order the paths A, B and C"),
    ("tree.thresholds.deploy_z=-1", "deploy_z must be 0 or more"),
    ("tree.export.baselines=[teacher,refrence]", r"unknown stages \['refrence'\]"),
])
def test_settings_that_would_fail_hours_in_are_refused_before_any_stage(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        pipeline(tmp_path / "run", override, runner=forbid)


def test_the_command_ends_an_interrupted_run_with_status_130_not_a_traceback(monkeypatch):
    import last_lite.pipeline.__main__ as command
    from omegaconf import OmegaConf

    def interrupted(cfg):  # run() has written the report and printed how to continue
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(command, "take_stage_choices", lambda cfg: None)
    monkeypatch.setattr(command, "run", interrupted)
    with pytest.raises(SystemExit) as exit_:
        command.main(OmegaConf.create({}))
    assert exit_.value.code == 130 and exit_.value.__suppress_context__  # `from None`: no traceback chain


def test_jobs_run_independent_stages_side_by_side_with_the_same_outcome(finished, tmp_path):
    lock, running, started = threading.Lock(), [0], []
    path_a = [threading.Barrier(2, timeout=60)]  # broken unless Path A's two stages run at once

    def side_by_side(argv, log_path, cwd, on_start, **kwargs):  # the finished stage's files
        stage_dir = Path(argv[-1].split("=", 1)[1])
        with lock:
            running[0] += 1
            started.append((stage_dir.name, running[0], argv))
        if path_a[0] is not None and stage_dir.name in ("teacher", A):
            path_a[0].wait()
        time.sleep(0.1)
        shutil.copytree(finished["dir"] / stage_dir.name, stage_dir)
        with lock:
            running[0] -= 1
        return 0

    run_dir = tmp_path / "run"
    report = pipeline(run_dir, published(0.0), "tree.jobs=2", runner=side_by_side)
    first = finished["first"]
    assert report["status"] == "complete"
    assert [(d["id"], d["outcome"]) for d in report["decisions"]] == \
        [(d["id"], d["outcome"]) for d in first["decisions"]]
    assert report["invocation"]["actions"] == first["invocation"]["actions"]  # each stage ran once
    order = [name for name, _, _ in started]
    assert sorted(order[:2]) == sorted(["teacher", A]) and order[2:] == [B, f"export_{B}"]
    assert max(n for _, n, _ in started) == 2 and not path_a[0].broken  # Path A's two stages at once
    threads = f"threads={max(1, available_cores() // 2)}"
    assert all(threads in argv for name, _, argv in started if name in ("teacher", A))
    # forced once per invocation, though the walk reaches the teacher twice
    started.clear()
    path_a[0] = None
    shutil.rmtree(run_dir / "_aside", ignore_errors=True)
    report = pipeline(run_dir, published(0.0), "tree.jobs=2", "tree.force=[teacher]", runner=side_by_side)
    assert [name for name, _, _ in started] == ["teacher"]
    assert report["invocation"]["actions"]["teacher"] == "forced"


def test_the_zoo_ships_what_the_tree_deployed_and_its_teacher(copy, tmp_path):
    import torch

    from last_lite.training.checkpoints import load_checkpoint
    from last_lite.zoo import load_zoo_model, zoo_onnx

    report = json.loads((copy / "report.json").read_text())
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    proc = subprocess.run([sys.executable, "-m", "last_lite.zoo", "--zoo", str(zoo), "from-pipeline", str(copy),
                           "--prefix", "tiny"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    (deployed,) = report["deployment"]
    stage = deployed["deployed_stage"]
    names = {f"tiny/{NANO}": stage, "tiny/last_e_v3_nano": "teacher"}
    assert set(json.loads((zoo / "index.json").read_text())) == set(names)
    for name, source_stage in names.items():
        model, entry = load_zoo_model(name, zoo)
        assert entry["source"]["stage"] == source_stage and entry["metrics"]["top1"] == metrics(copy, source_stage)["top1"]
        weights = load_checkpoint(copy / state(copy)["stages"][source_stage]["outputs"]["checkpoint"])["state_dict"]
        for key, value in model.state_dict().items():
            assert torch.equal(value, weights[f"model.{key}"]), key
    source = json.loads((zoo / "index.json").read_text())[f"tiny/{NANO}"]["source"]
    assert source["path"] == deployed["deployed_path"]
    assert source["pipeline"] == "run"  # relative to the zoo's repository (tmp_path here), not this machine's path
    int8 = json.loads((copy / f"export_{stage}" / "metrics.json").read_text())["evaluation"]["models"]["int8"]
    assert zoo_onnx(f"tiny/{NANO}", zoo_dir=zoo).stat().st_size > 0
    assert json.loads((zoo / "index.json").read_text())[f"tiny/{NANO}"]["onnx_int8"]["test_top1"] == int8["top1"]
    assert f"tiny/{NANO} (student, {stage}): onnx_fp32" in proc.stdout
    with pytest.raises(KeyError, match="ships no onnx_int8"):  # no teacher export in this run (baselines=[])
        zoo_onnx("tiny/last_e_v3_nano", zoo_dir=zoo)

    report["status"] = "failed"  # a tree that has not finished ships nothing
    (copy / "report.json").write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-m", "last_lite.zoo", "--zoo", str(tmp_path / "other"), "from-pipeline",
                           str(copy)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "not complete: rerun it to the end" in proc.stderr


def test_failures_are_recorded_and_an_optional_export_is_not_fatal(copy):
    def fail(argv, log_path, cwd, on_start):
        log_path.write_text("boom\n")
        return 2

    report = pipeline(copy, published(0.0), "tree.export.baselines=[teacher]", runner=fail)
    assert report["status"] == "complete" and "optional export of the teacher failed" in report["warnings"][0]
    report = pipeline(copy, published(0.0), f"tree.force=[{B}]", runner=fail)
    assert report["status"] == "failed" and f"stage {B} failed (exit code 2)" in report["failures"][0]
    assert state(copy)["stages"][B]["status"] == "failed"
    assert "## Failures" in (copy / "report.md").read_text()


def test_runs_made_outside_the_pipeline_are_adopted_only_when_their_configs_match(finished, tmp_path):
    from omegaconf import OmegaConf

    from last_lite.pipeline.state import run_subprocess

    by_hand = tmp_path / "by_hand"
    for stage in ("teacher", A, B):
        shutil.copytree(finished["dir"] / stage, by_hand / stage)
    other_seed = tmp_path / "other_seed"
    shutil.copytree(by_hand / "teacher", other_seed)
    cfg = OmegaConf.load(other_seed / "config.yaml")
    cfg.seed = 7
    OmegaConf.save(cfg, other_seed / "config.yaml")

    run_dir = tmp_path / "fresh"
    refused = pipeline(run_dir, f"++tree.adopt.teacher={other_seed}", runner=forbid)
    assert refused["status"] == "failed"
    assert re.search(r"(?s)not made with this stage's config.*seed: stage 0 vs run 7", refused["failures"][0])
    assert not (run_dir / "teacher").exists()

    def only_export(argv, *args, **kwargs):
        assert "last_lite.export" in argv, f"a training stage ran: {' '.join(argv)}"
        return run_subprocess(argv, *args, **kwargs)

    # B's teacher.ckpt names the original teacher folder: the same weights, so it still matches
    adopt = [f"++tree.adopt.{stage}={by_hand / stage}" for stage in ("teacher", A, B)]
    report = pipeline(run_dir, published(0.0), *adopt, runner=only_export)
    assert report["status"] == "complete"
    assert report["invocation"]["actions"] == {"teacher": "adopted", A: "adopted", B: "adopted",
                                               f"export_{B}": "ran"}
    assert metrics(run_dir, B) == metrics(finished["dir"], B)
    assert state(run_dir)["stages"]["teacher"]["adopted_from"] == str(by_hand / "teacher")
    again = pipeline(run_dir, published(0.0), *adopt, runner=forbid)
    assert set(again["invocation"]["actions"].values()) == {"reused"}


@pytest.mark.parametrize("group", ["tree", "pipeline"])  # pipeline: the former spelling, rewritten
def test_the_cli_takes_data_and_experiment_choices_for_its_stages(group, tmp_path):
    proc = run_command("pipeline", ["data=synthetic", "experiment=nw_ucla",
                                    f"++{group}.adopt.teacher={tmp_path / 'nowhere'}"],
                       tmp_path / "run", check=False)
    out = proc.stdout + proc.stderr
    assert "every training stage gets: data=synthetic experiment=nw_ucla" in out
    assert proc.returncode == 1 and "tree.adopt.teacher: " in out and "is not a finished run" in out
    assert (f"++pipeline.adopt.teacher={tmp_path / 'nowhere'} is the former spelling of "
            f"++tree.adopt.teacher={tmp_path / 'nowhere'}; rewritten" in out) == (group == "pipeline")
