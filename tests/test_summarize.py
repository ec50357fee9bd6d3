"""summarize --paired: cells over seeds, their spread, and paired differences with t statistics."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from last_lite.summarize import collect, write_paired_table, write_tables


def _job(folder: Path, name: str, command: str, overrides: list[str], top1: float | None,
         precision_config: str = "32-true", precision_ran: str | None = None, network: str | None = None,
         choices: dict | None = None, config: dict | None = None) -> None:
    """A run folder as a Hydra job leaves it: .hydra/{overrides,hydra,config}.yaml and metrics.json."""
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"config_name": command},
                   "runtime": {"choices": {"model": "last_lite_small", **(choices or {})}}}}))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "threads": None, "trainer": {"precision": precision_config}, **(config or {})}))
    if top1 is not None:
        metrics = {"top1": top1, **({"precision": precision_ran} if precision_ran else {}),
                   **({"model": network} if network else {})}
        (job / "metrics.json").write_text(json.dumps(metrics))


def _record(folder: Path, name: str, command: str, seed: int, top1: float, network: str = "last_lite_small",
            **values) -> None:
    """A run kept as docs/ keeps it (config.yaml and metrics.json, no .hydra/), its config as a run writes it:
    paths inside its own run folder, the threads it ran with, ``values`` (dotted keys) set."""
    run = f"/work/outputs/{name}"
    config = {"task_name": command, "seed": seed, "threads": seed + 1, "init_from": None,
              "paths": {"output_dir": run}, "trainer": {"default_root_dir": run, "precision": "32-true"},
              "callbacks": {"last_checkpoint": {"dirpath": f"{run}/checkpoints"}},
              "data": {"train_transform": {"rotate": [1.0472, 1.0472, 0.0]}, "source": {"normalize": False}}}
    for key, value in values.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (folder / name).mkdir(parents=True)
    (folder / name / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / name / "metrics.json").write_text(json.dumps({"top1": top1, "model": network}))


@pytest.fixture
def cells_folder(tmp_path) -> Path:
    folder = tmp_path / "cells"
    standalone = [0.90, 0.88, 0.91]
    distilled = [0.92, 0.91, 0.915]
    for seed, (a, b) in enumerate(zip(standalone, distilled)):
        # a resumed run (ckpt_path), another thread count: where it ran, not what it computed
        extra = [f"ckpt_path=runs/a{seed}/last.ckpt"] if seed == 1 else []
        _job(folder, f"a{seed}", "train", [f"seed={seed}", "threads=1", *extra], a)
        # seed 2 asked for precision auto and ran float32: the same cell as the float32 runs
        # seed 1 compiled its teacher: the same function, faster
        _job(folder, f"b{seed}", "distill", [f"seed={seed}", "threads=2",
                                             *(["trainer.precision=auto"] if seed == 2 else []),
                                             *(["teacher.compile=true"] if seed == 1 else [])], b,
             precision_config="auto" if seed == 2 else "32-true", precision_ran="32-true" if seed == 2 else None)
    _job(folder, "b_unfinished", "distill", ["seed=3"], None)
    return folder


def _row(text: str, starts: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {starts}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_cells_pair_seeds_and_give_the_paired_t_statistic(cells_folder):
    text = write_paired_table(cells_folder, {"command": "train"})
    assert (cells_folder / "paired.md").read_text() == text
    reference, distilled = _row(text, "command=train"), _row(text, "command=distill")
    assert reference[0].endswith("(reference)") and reference[1:5] == ["3", "0 1 2", "89.67", "1.53"]
    diffs = [2.0, 3.0, 0.5]
    mean, sd = sum(diffs) / 3, math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert distilled[1:3] == ["3", "0 1 2"]  # the unfinished seed-3 job is left out
    assert distilled[5:] == [f"{mean:+.2f}", f"{sd:.2f}", f"{mean / (sd / math.sqrt(3)):.2f}", "3"]


@pytest.mark.parametrize("damage", [("metrics.json", "{\"top1\": 0.9"), ("metrics.json", "[0.9]"),
                                    ("metrics.json", "{\"top1\": \"0.9\"}"), (".hydra/overrides.yaml", "a: [b")])
def test_a_damaged_job_is_named_and_the_others_still_pair(cells_folder, capsys, damage):
    name, text = damage
    _job(cells_folder, "a3", "train", ["seed=3"], 0.9)
    (cells_folder / "a3" / name).write_text(text)
    table = write_tables(cells_folder)
    assert _row(table, "a3")[-1].startswith(f"unreadable {Path(name).name}")
    assert f"a3: unreadable {Path(name).name}" in capsys.readouterr().err
    reference = _row(write_paired_table(cells_folder, {"command": "train"}), "command=train")
    assert reference[1:3] == ["3", "0 1 2"]  # seed 3's damaged job counts in no cell


def test_a_reference_that_is_not_one_cell_and_a_seed_run_twice_are_refused(cells_folder):
    with pytest.raises(SystemExit, match="matches 0 cells, not one; the cells: command=train; command=distill"):
        write_paired_table(cells_folder, {"command": "pretrain"})
    _job(cells_folder, "a0_again", "train", ["seed=0"], 0.5)
    with pytest.raises(SystemExit, match="two jobs of one cell ran seed 0"):
        write_paired_table(cells_folder)


def test_each_cell_is_paired_with_the_reference_of_its_own_network(tmp_path):
    top1 = {("train", "last_lite_small"): [0.90, 0.88], ("distill", "last_lite_small"): [0.92, 0.91],
            ("train", "last_lite_nano"): [0.80, 0.84], ("distill", "last_lite_nano"): [0.85, 0.86]}
    for (command, network), scores in top1.items():
        for seed, score in enumerate(scores):
            model = "model@student" if command == "distill" else "model"
            _job(tmp_path, f"{command}_{network}_{seed}", command, [f"seed={seed}", f"{model}={network}"], score,
                 network=network)
    text = write_paired_table(tmp_path, {"command": "train"})
    assert _row(text, "command=train, network=last_lite_nano")[0].endswith("(reference)")
    assert _row(text, "command=train, network=last_lite_small")[0].endswith("(reference)")
    assert _row(text, "command=distill, network=last_lite_nano")[5:] == ["+3.50", "2.12", "2.33", "2"]
    assert _row(text, "command=distill, network=last_lite_small")[5:] == ["+2.50", "0.71", "5.00", "2"]
    # two reference cells of one network cannot both be the reference
    _job(tmp_path, "train_small_lr", "train", ["seed=0", "model=last_lite_small", "optim.lr=0.05"], 0.5,
         network="last_lite_small")
    with pytest.raises(SystemExit, match="matches more than one cell of network last_lite_small"):
        write_paired_table(tmp_path, {"command": "train"})


def test_the_command_line_asks_for_paired_before_a_reference(cells_folder):
    run = [sys.executable, "-m", "last_lite.summarize", str(cells_folder)]
    for alone in (["--reference", "command=train"], ["--same", "teacher.ckpt"]):
        refused = subprocess.run([*run, *alone], cwd=REPO, capture_output=True, text=True)
        assert refused.returncode == 2 and "add --paired" in refused.stderr
    done = subprocess.run([*run, "--paired", "--reference", "command=train"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert "paired diff" in done.stdout and (cells_folder / "summary.md").is_file()


def test_the_jobs_table_leaves_out_how_a_job_executed_and_the_csv_keeps_it(cells_folder):
    text = write_tables(cells_folder)
    header = _row(text, "job")
    assert "ckpt_path" not in header and "threads" not in header and "teacher.compile" not in header
    assert "`trainer.precision=32-true`" in text  # what every job computed with stays, as shared
    assert "selection rule handed on" in text
    assert "ckpt_path" in (cells_folder / "summary.csv").read_text().splitlines()[0]


def test_a_kept_record_joins_a_sweep_with_its_config_values_and_can_be_the_reference(tmp_path):
    """A run kept as docs/ keeps it (config.yaml, metrics.json, no .hydra/): the preset point of a sweep."""
    folder = tmp_path / "sweep"
    for seed, (tau2, tau6) in enumerate([(0.93, 0.95), (0.94, 0.955)]):
        for tau, top1 in ((2, tau2), (6, tau6)):
            _job(folder, f"tau{tau}_s{seed}", "distill", ["model@student=last_lite_small", f"kd.tau={tau}",
                                                          f"seed={seed}"], top1, network="last_lite_small")
        record = folder / f"preset_s{seed}"
        record.mkdir()
        (record / "config.yaml").write_text(yaml.safe_dump(
            {"task_name": "distill", "seed": seed, "kd": {"tau": 4.0}, "trainer": {"precision": "32-true"},
             "student": {"name": "last_lite_small"}}))  # `model@student=` was once `student=`
        (record / "metrics.json").write_text(json.dumps({"top1": 0.94, "model": "last_lite_small"}))
    table = write_tables(folder)
    assert _row(table, "preset_s1")[:3] == ["preset_s1", "4", "1"]  # kd.tau and seed from its config
    assert "model@student" not in table.splitlines()[0]  # unknown for the record, the same for the rest
    assert "`model@student=last_lite_small`" in table
    paired = write_paired_table(folder, {"kd.tau": "4.0"})
    assert _row(paired, "kd.tau=4")[0] == "kd.tau=4 (reference)"
    tau6 = _row(paired, "kd.tau=6")
    assert tau6[:4] == ["kd.tau=6", "2", "0 1", "95.25"] and tau6[5] == "+1.25" and tau6[-1] == "2"


def test_an_unfinished_job_shows_how_far_its_curves_got(cells_folder):
    """No metrics.json: the last epoch its CSV logger flushed, of the run's max_epochs (a running or
    cut-off job), or that no epoch was logged; its network from its config-group choice."""
    unfinished = cells_folder / "b_unfinished"
    assert _row(write_tables(cells_folder), "b_unfinished")[-1] == "no metrics.json, no epoch logged"
    config = yaml.safe_load((unfinished / ".hydra" / "config.yaml").read_text())
    config["trainer"]["max_epochs"] = 65
    (unfinished / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (unfinished / "csv").mkdir()
    rows = ["epoch,step,train/loss,lr-SGD"] + [f"{e},{e * 10 + 9},0.5," for e in range(7)] + ["6,69,,0.1"]
    (unfinished / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert _row(write_tables(cells_folder), "b_unfinished")[-1] == "no metrics.json, at epoch 7 of 65"
    row = next(r for r in collect(cells_folder)[1] if r["job"] == "b_unfinished")
    assert row["network"] == "last_lite_small"


def test_a_number_spelled_two_ways_is_one_cell(tmp_path):
    """kd.tau=4 on one command line, 4.0 from the config of a job that did not override it: one cell."""
    folder = tmp_path / "sweep"
    for seed in (0, 1):
        _job(folder, f"tau4_s{seed}", "distill", ["kd.tau=4", f"seed={seed}"], 0.94)
        _job(folder, f"tau6_s{seed}", "distill", ["kd.tau=6.0", f"seed={seed}"], 0.95)
    _job(folder, "preset_s2", "distill", ["seed=2"], 0.93)
    config = yaml.safe_load((folder / "preset_s2" / ".hydra" / "config.yaml").read_text())
    (folder / "preset_s2" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "kd": {"tau": 4.0}}))
    paired = write_paired_table(folder, {"kd.tau": "4.0"})
    assert _row(paired, "kd.tau=4")[:3] == ["kd.tau=4 (reference)", "3", "0 1 2"]
    assert _row(paired, "kd.tau=6")[:3] == ["kd.tau=6", "2", "0 1"]


def test_same_pairs_runs_that_name_one_teacher_two_ways(tmp_path):
    """The preset's seed 0 distilled from a run's last.ckpt, seed 1 from its zoo copy: two cells, unless
    teacher.ckpt is declared the same."""
    folder = tmp_path / "sweep"
    for seed, teacher in enumerate(["outputs/runs/full_base_s1/checkpoints/last.ckpt",
                                    "zoo/nw_ucla/last_e_v3_base.safetensors"]):
        _job(folder, f"preset_s{seed}", "distill", [f"teacher.ckpt={teacher}", "kd.tau=4", f"seed={seed}"], 0.94)
        _job(folder, f"tau2_s{seed}", "distill", ["teacher.ckpt=zoo/nw_ucla/last_e_v3_base.safetensors",
                                                  "kd.tau=2", f"seed={seed}"], 0.95 + seed / 100)
    with pytest.raises(SystemExit, match="matches more than one cell"):
        write_paired_table(folder, {"kd.tau": "4"})
    paired = write_paired_table(folder, {"kd.tau": "4"}, same=("teacher.ckpt",))
    assert _row(paired, "kd.tau=4")[:3] == ["kd.tau=4 (reference)", "2", "0 1"]
    assert _row(paired, "kd.tau=2")[5:] == ["+1.50", "0.71", "3.00", "2"]
    assert "(--same): teacher.ckpt" in paired


def test_records_of_two_configs_are_two_cells(tmp_path):
    """Records have no overrides: the config keys in which records of one command and network differ
    make their cells (where and how each ran, its seed and paths inside its own folder aside)."""
    for seed in (0, 1):
        _record(tmp_path, f"F_s{seed}", "train", seed, 0.90 + seed / 100)
        _record(tmp_path, f"F_rot_s{seed}", "train", seed, 0.93, **{"data.train_transform.rotate": 0.3})
        # A and FT differ only in init_from; another network's config differs throughout (its network says so)
        _record(tmp_path, f"FT_s{seed}", "train", seed, 0.92 + seed / 100, init_from="outputs/P/encoder.safetensors")
        _record(tmp_path, f"nano_s{seed}", "train", seed, 0.80, network="last_lite_nano", **{"model.depth": 2})
    columns, _, _ = collect(tmp_path)
    assert columns[2:-3] == ["data.train_transform.rotate", "init_from"]
    table = write_tables(tmp_path)
    assert _row(table, "F_rot_s1")[:4] == ["F_rot_s1", "last_lite_small", "0.3", ""]
    assert _row(table, "FT_s0")[2:4] == ["[1.0472,1.0472,0]", "outputs/P/encoder.safetensors"]
    paired = write_paired_table(tmp_path, {"init_from": "null", "data.train_transform.rotate": "[1.0472,1.0472,0]"})
    assert _row(paired, "network=last_lite_small, data.train_transform.rotate=[1.0472,1.0472,0], init_from=null")[:5] \
        == ["network=last_lite_small, data.train_transform.rotate=[1.0472,1.0472,0], init_from=null (reference)",
            "2", "0 1", "90.50", "0.71"]
    assert _row(paired, "network=last_lite_small, data.train_transform.rotate=0.3")[1:3] == ["2", "0 1"]
    assert _row(paired, "network=last_lite_small, data.train_transform.rotate=[1.0472,1.0472,0], "
                        "init_from=outputs/P/encoder.safetensors")[5:] == ["+2.00", "0.00", "", "2"]
    assert _row(paired, "network=last_lite_nano")[1:3] == ["2", "0 1"]


def test_a_record_joins_the_cell_of_the_jobs_whose_group_choices_it_cannot_name(tmp_path):
    """A record's config-group choices are unknown (``?``): they match the one choice the jobs show; a
    record's keys are read in today's spelling of renamed groups."""
    for seed in (0, 1):
        _job(tmp_path, f"tau2_s{seed}", "distill", ["model@teacher=last_e_v3_base", "kd.tau=2", f"seed={seed}"],
             0.95, choices={"model@teacher": "last_e_v3_base"})
    _record(tmp_path, "preset_s2", "distill", 2, 0.94, **{"kd.tau": 2.0})
    _record(tmp_path, "preset_s3", "distill", 3, 0.96, **{"distill.tau": 2.0})  # written before distill.* became kd.*
    paired = write_paired_table(tmp_path, {"model@teacher": "last_e_v3_base"})
    assert paired.count("\n| ") == 1  # one cell
    assert _row(paired, "(all jobs)")[:4] == ["(all jobs) (reference)", "4", "0 1 2 3", "95.00"]


def test_a_boolean_and_null_spelled_two_ways_are_one_cell(tmp_path):
    """``normalize=False`` on one command line, ``false`` in another job's config: one cell; ``init_from=null``
    names the jobs that did not override it."""
    normalize = {"data": {"source": {"normalize": False}}}
    for seed in (0, 1):
        _job(tmp_path, f"A_s{seed}", "train", [f"seed={seed}"], 0.90, config=normalize)
        _job(tmp_path, f"FT_s{seed}", "train", ["init_from=P/encoder.safetensors", f"seed={seed}",
                                                *(["data.source.normalize=False"] if seed == 0 else [])],
             0.92, config=normalize)
    paired = write_paired_table(tmp_path, {"init_from": "null"})
    assert _row(paired, "init_from=null")[:3] == ["init_from=null (reference)", "2", "0 1"]
    assert _row(paired, "init_from=P/encoder.safetensors")[1:3] == ["2", "0 1"]
    assert "normalize" not in paired
