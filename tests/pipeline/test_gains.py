"""The expected-gain grid (``python -m last_lite.pipeline.gains``): its jobs, their order and
inputs, a real run on a tiny synthetic set, the rerun that reads instead of retraining, and a
failure that blocks only what needs it."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY_DATA, run_command
from last_lite.pipeline.gains import Grid, build_jobs

REPO = Path(__file__).resolve().parents[2]
TINY = [*TINY_DATA, "trainer.max_epochs=1", "data.source.num_classes=4", "threads=1"]
NANO = "last_lite_nano"


def _hydra_list(items) -> str:
    return "[" + ",".join(f'"{i}"' for i in items) + "]"


def compose(run_dir: Path, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("gains", overrides=[f"run_dir={run_dir}", *overrides])


# the nano student distilled from its own standalone run (seed 0): the grid trains its teacher
TINY_GRID = [f"overrides={_hydra_list(TINY)}", f"teacher.model={NANO}", "~networks.last_lite_small",
             "~networks.last_e_v3_base", "seeds=[0]"]


def grid(run_dir: Path, *overrides: str) -> Grid:
    with contextlib.chdir(REPO):
        return Grid(compose(run_dir, *TINY_GRID, *overrides), run_dir, REPO)


def test_the_default_grid_has_every_cell_of_the_issue_seed_by_seed(tmp_path):
    jobs = build_jobs(compose(tmp_path, "stage_choices.data=nw_ucla"))
    names = [job.name for job in jobs]
    assert names[0] == "last_e_v3_base/A_s0"  # the teacher first: every B and C needs it
    assert len(names) == len(set(names)) == 2 * 3 * 5 + 2 * 3  # students A B P C FT x3, base A P FT x2
    assert [job.seed for job in jobs[1:]] == sorted(job.seed for job in jobs[1:])
    by_name = {job.name: job for job in jobs}
    c = by_name["last_lite_nano/C_s2"]
    assert c.command == "distill" and c.needs == {"teacher.ckpt": "last_e_v3_base/A_s0",
                                                 "init_from": "last_lite_nano/P_s2"}
    assert "kd=nano" in c.overrides and "model@student=last_lite_nano" in c.overrides
    assert by_name["last_lite_small/FT_s1"].needs == {"init_from": "last_lite_small/P_s1"}
    assert by_name["last_e_v3_base/FT_s1"].command == "train" and "last_e_v3_base/A_s2" not in by_name
    assert all("data=nw_ucla" in job.overrides for job in jobs)
    for job in jobs:  # what a job needs comes before it
        assert all(names.index(source) < names.index(job.name) for source in job.needs.values())
    commands = Grid(compose(tmp_path, "stage_choices.data=nw_ucla"), tmp_path, REPO).dry_run()
    assert len(commands) == len(jobs) and commands[names.index("last_lite_nano/C_s2")].startswith(
        "python -m last_lite.distill model@teacher=last_e_v3_base model@student=last_lite_nano kd=nano")
    assert "init_from=<last_lite_nano/P_s2's encoder>" in commands[names.index("last_lite_nano/C_s2")]


def test_a_given_teacher_checkpoint_is_passed_and_bad_grids_fail_with_the_reason(tmp_path):
    jobs = build_jobs(compose(tmp_path, "teacher.ckpt=zoo/t.safetensors", "~networks.last_e_v3_base"))
    b = next(job for job in jobs if job.cell == "B")
    assert "teacher.ckpt=zoo/t.safetensors" in b.overrides and b.needs == {}
    given = Grid(compose(tmp_path, "teacher.ckpt=zoo/t.safetensors", "~networks.last_e_v3_base"), tmp_path, REPO)
    assert given.teacher() == {"model": "last_e_v3_base", "ckpt": "zoo/t.safetensors"}
    only_a = Grid(compose(tmp_path, "networks.last_lite_small.cells=[A]", "networks.last_lite_nano.cells=[A]"),
                  tmp_path, REPO)
    assert only_a.teacher() is None  # nothing distils: no teacher line
    with pytest.raises(ValueError, match="list network last_e_v3_base with cell A"):
        build_jobs(compose(tmp_path, "~networks.last_e_v3_base"))
    with pytest.raises(ValueError, match=r"unknown cells \['D'\]"):
        build_jobs(compose(tmp_path, "networks.last_lite_nano.cells=[A,D]"))
    with pytest.raises(ValueError, match="network last_lite_small has no seeds"):
        build_jobs(compose(tmp_path, "seeds=[]"))
    proc = run_command("pipeline.gains", ["networks.last_lite_nano.cells=[A,D]", "dry_run=true"],
                       tmp_path / "cli", check=False)
    assert proc.returncode != 0 and "unknown cells ['D']" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_command("pipeline.gains", ["jobs=0"], tmp_path / "cli", check=False)
    assert proc.returncode != 0 and "jobs must be a whole number >= 1" in proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("gains") / "run"
    g = grid(run_dir)
    with contextlib.chdir(REPO):
        status = g.run(jobs=2)
    return {"dir": run_dir, "status": status, "report": json.loads((run_dir / "gains.json").read_text())}


def test_the_grid_runs_each_cell_from_its_inputs_and_reports_their_metrics(finished):
    run_dir = finished["dir"]
    assert finished["status"] == {f"{NANO}/{c}_s0": "done" for c in ("A", "B", "P", "C", "FT")}

    def config(cell):
        return yaml.safe_load((run_dir / NANO / f"{cell}_s0" / "config.yaml").read_text())

    def metrics(cell):
        return json.loads((run_dir / NANO / f"{cell}_s0" / "metrics.json").read_text())

    assert Path(config("B")["teacher"]["ckpt"]) == Path(metrics("A")["checkpoint"])
    encoder = run_dir / NANO / "P_s0" / "encoder.safetensors"
    assert encoder.is_file()
    assert Path(config("C")["init_from"]) == Path(config("FT")["init_from"]) == encoder
    assert Path(config("C")["teacher"]["ckpt"]) == Path(metrics("A")["checkpoint"])
    rows = {row["cell"]: row for row in finished["report"]["cells"]}
    for cell in ("A", "B", "C", "FT"):
        assert rows[cell]["top1_by_seed"] == {"0": pytest.approx(100 * metrics(cell)["top1"])}
    diffs = {d["difference"]: d for d in finished["report"]["differences"]}
    assert diffs["C - B"]["mean"] == pytest.approx(100 * (metrics("C")["top1"] - metrics("B")["top1"]))
    assert diffs["FT - A"]["pairs"] == 1 and diffs["FT - A"]["t"] is None  # one pair: no t
    md = (run_dir / "gains.md").read_text()
    assert f"| {NANO} | C | MaskCLR-pretrained, then distilled | 86-88 |" in md and "Not finished" not in md
    teacher = finished["report"]["teacher"]  # the grid's own A run of the teacher, named with its score
    assert teacher == {"model": NANO, "job": f"{NANO}/A_s0", "top1": pytest.approx(100 * metrics("A")["top1"])}
    assert f"The teacher of the B and C cells: this grid's {NANO}/A_s0, test top-1 {teacher['top1']:.2f}." in md


def test_a_rerun_reads_every_finished_job_and_refuses_a_changed_config(finished, tmp_path):
    run_dir = finished["dir"]
    before = {p: p.read_bytes() for p in run_dir.glob(f"{NANO}/*/metrics.json")}
    with contextlib.chdir(REPO):
        assert set(grid(run_dir).run(jobs=2).values()) == {"done"}
    assert {p: p.read_bytes() for p in run_dir.glob(f"{NANO}/*/metrics.json")} == before
    log = (run_dir / "logs" / f"{NANO}_C_s0.log").read_text()
    assert "nothing to do" in log
    # another learning rate: each job's command refuses its folder, nothing is overwritten
    changed = grid(run_dir, f"networks.{NANO}.overrides={_hydra_list(['optim.lr=0.01'])}", f"networks.{NANO}.cells=[A]")
    with contextlib.chdir(REPO):
        assert changed.run(jobs=1) == {f"{NANO}/A_s0": "failed"}
    assert "holds a run of another config (optim.lr" in (run_dir / "logs" / f"{NANO}_A_s0.log").read_text()
    assert {p: p.read_bytes() for p in run_dir.glob(f"{NANO}/*/metrics.json")} == before
    # one grid per folder: a second one is refused while the first holds the lock
    from last_lite.io import FileLock

    with FileLock(run_dir / ".gains.lock"):
        refused = run_command("pipeline.gains", TINY_GRID, run_dir, check=False)
    assert refused.returncode != 0 and "another gains run" in refused.stderr and "Traceback" not in refused.stderr
    # report_only tabulates the finished jobs and runs nothing
    (run_dir / "gains.md").unlink()
    shown = run_command("pipeline.gains", [*TINY_GRID, "report_only=true"], run_dir)
    assert f"| {NANO} | FT | MaskCLR-pretrained, then fine-tuned |" in shown.stdout
    assert (run_dir / "gains.md").read_text() in shown.stdout
    # a job cut off (or still running) shows the last epoch it logged
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy / NANO / "FT_s0" / "metrics.json").unlink()
    assert grid(copy).write_report()["jobs"][f"{NANO}/FT_s0"] == "at epoch 1"
    # a pretraining kept only as a record (metrics, no encoder) is done, and says so
    (copy / NANO / "P_s0" / "encoder.safetensors").unlink()
    assert grid(copy).write_report()["jobs"][f"{NANO}/P_s0"] == "done, encoder.safetensors absent"
    assert f"{NANO}/P_s0" not in (copy / "gains.md").read_text()  # not listed as unfinished


def test_a_failed_pretraining_blocks_only_the_cells_that_start_from_it(tmp_path):
    run_dir = tmp_path / "run"
    g = grid(run_dir, f"networks.{NANO}.cells=[FT]", f"pretrain_overrides={_hydra_list(['maskclr.mask_ratio=2.0'])}",
             f"teacher.ckpt={tmp_path / 'unused.ckpt'}")
    with contextlib.chdir(REPO):
        status = g.run(jobs=1)
    assert status == {f"{NANO}/P_s0": "failed", f"{NANO}/FT_s0": "blocked"}
    assert "mask_ratio" in (run_dir / "logs" / f"{NANO}_P_s0.log").read_text()
    assert json.loads((run_dir / "gains.json").read_text())["jobs"] == status


def test_sigterm_ends_the_grid_and_its_running_job_with_a_resume_hint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    long = [*TINY_DATA, "trainer.max_epochs=50", "data.source.num_classes=4", "threads=1"]
    long_job = [f"overrides={_hydra_list(long)}", *TINY_GRID[1:], f"networks.{NANO}.cells=[A]"]
    cmd = [sys.executable, "-m", "last_lite.pipeline.gains", *long_job, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    job_log = run_dir / "logs" / f"{NANO}_A_s0.log"
    deadline = time.monotonic() + 300
    while not (job_log.is_file() and "$ " in job_log.read_text()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted: rerun the same command to continue" in err and "Traceback" not in err
    if Path("/proc").is_dir():  # the job's process ended with the grid (no orphan writing into its folder)
        job_dir = str(run_dir / NANO / "A_s0")
        alive = [p for p in Path("/proc").glob("[0-9]*") if _reads(p / "cmdline").find(job_dir) >= 0]
        assert not alive
    assert json.loads((run_dir / "gains.json").read_text())["jobs"][f"{NANO}/A_s0"] != "done"


def _reads(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""
