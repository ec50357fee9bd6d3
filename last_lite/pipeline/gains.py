"""``python -m last_lite.pipeline.gains data=<data> [experiment=<exp>] [jobs=2]``: the design note's
expected-gain tables (Part 3) measured, every cell from one resumable command.

A *cell* is one training path of one network, run once per seed:

- ``A``: standalone (``last_lite.train``);
- ``B``: distilled from the teacher (``last_lite.distill``);
- ``C``: MaskCLR-pretrained, then distilled (``last_lite.pretrain``, then ``distill init_from=``);
- ``FT``: MaskCLR-pretrained, then fine-tuned on the labels (``train init_from=``), which
  separates the pretraining's own effect from distillation's.

``C`` and ``FT`` of a seed start from that seed's pretraining (job ``P``). The teacher is
``teacher.ckpt`` or, when that is null, the checkpoint chosen by the selection rule in the
teacher network's own ``A`` run of seed ``teacher.seed`` in this grid (so list that network with
cell ``A``). Each job runs ``python -m last_lite.<command> ... seed=<s> ckpt_path=last`` in
``<run_dir>/<network>/<cell>_s<seed>``: running the same command again resumes a cut-off job from
its newest checkpoint and reads a finished one (the command refuses a folder holding a run of
another config), so a finished run made elsewhere joins the grid by linking its folder there.
``jobs`` run side by side, each with ``threads=<cores / jobs>``; a failed job blocks only the jobs
that need its output; one grid runs in a folder at a time (``.gains.lock``). After each job, ``gains.md`` and ``gains.json`` in the run folder give every
cell's test top-1 by seed, mean and sd next to the note's prediction, and the paired differences
B - A, C - B, C - A and FT - A with their t statistics. Exit status 1 when a job failed, 130
when Ctrl-C or SIGTERM ended it (the running jobs are ended with it; rerun to continue).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from last_lite.io import FileLock, LockHeld, atomic_write_text
from last_lite.pipeline.state import (INTERRUPTED_EXIT, available_cores, interrupt, last_logged_epoch,
                                      pretrain_outputs, take_stage_choices, training_outputs)
from last_lite.summarize import Cell, paired_difference

log = logging.getLogger("last_lite.pipeline.gains")

CELLS = {"A": "standalone", "B": "distilled", "C": "MaskCLR-pretrained, then distilled",
         "FT": "MaskCLR-pretrained, then fine-tuned"}
COMMANDS = {"A": "train", "B": "distill", "P": "pretrain", "C": "distill", "FT": "train"}
#: (cell, reference): the differences the note's claims are about, each paired by seed
DIFFERENCES = (("B", "A"), ("C", "B"), ("C", "A"), ("FT", "A"))


@dataclass
class Job:
    """One command of the grid; ``needs`` maps an override key to the job whose output fills it
    (``teacher.ckpt``: its chosen checkpoint; ``init_from``: its encoder)."""

    network: str
    cell: str
    seed: int
    overrides: list[str]
    needs: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.network}/{self.cell}_s{self.seed}"

    @property
    def command(self) -> str:
        return COMMANDS[self.cell]


def _list(value) -> list[str]:
    return [str(v) for v in (OmegaConf.to_container(value, resolve=True) if value is not None else [])]


def build_jobs(cfg: DictConfig) -> list[Job]:
    """Every job of the grid, the teacher's first, then seed by seed (so that finished pairs come
    early), each network's pretraining before the cells that start from it."""
    choices = cfg.get("stage_choices") or {}
    common = [f"{group}={choices[group]}" for group in ("data", "experiment") if choices.get(group)]
    common += _list(cfg.get("overrides"))
    teacher = cfg.teacher
    networks = {str(name): spec for name, spec in (cfg.networks or {}).items() if spec is not None}
    teacher_job = None if teacher.get("ckpt") else f"{teacher.model}/A_s{int(teacher.seed)}"
    jobs: dict[str, Job] = {}
    for name, spec in networks.items():
        cells = [str(c) for c in spec.cells]
        unknown = sorted(set(cells) - set(CELLS))
        if unknown:
            raise ValueError(f"networks.{name}.cells: unknown cells {unknown}; choose from {list(CELLS)}")
        seeds = [int(s) for s in (spec.get("seeds") or cfg.seeds or [])]
        if not seeds:
            raise ValueError(f"network {name} has no seeds: set seeds (e.g. seeds=[0,1,2]) or networks.{name}.seeds")
        own = [*common, *_list(spec.get("overrides"))]
        distill = [f"model@teacher={teacher.model}", *_list(teacher.get("overrides")),
                   *([f"teacher.ckpt={teacher.ckpt}"] if teacher_job is None else []),
                   f"model@student={name}", *([f"kd={spec.kd}"] if spec.get("kd") else []), *own]
        teacher_need = {} if teacher_job is None else {"teacher.ckpt": teacher_job}
        for seed in seeds:
            pretrained = {"init_from": f"{name}/P_s{seed}"}
            planned = {"A": ([f"model={name}", *own], {}),
                       "B": (distill, teacher_need),
                       "P": ([f"model={name}", *own, *_list(cfg.get("pretrain_overrides"))], {}),
                       "C": (distill, {**teacher_need, **pretrained}),
                       "FT": ([f"model={name}", *own], pretrained)}
            wanted = [*cells, *(["P"] if {"C", "FT"} & set(cells) else [])]
            for cell in ("A", "B", "P", "C", "FT"):  # the pretraining before the cells that need it
                if cell in wanted:
                    job = Job(name, cell, seed, *planned[cell])
                    jobs[job.name] = job
    if teacher_job is not None and teacher_job not in jobs:
        raise ValueError(f"teacher.ckpt is null, so the teacher is the grid's own {teacher_job}: list "
                         f"network {teacher.model} with cell A and seed {teacher.seed}, or set teacher.ckpt")
    return sorted(jobs.values(), key=lambda j: (j.name != teacher_job, j.seed))


class Grid:
    """Runs the jobs of one grid folder (see the module docstring)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, cwd: Path):
        self.cfg, self.run_dir, self.cwd = cfg, run_dir, cwd
        self.jobs = build_jobs(cfg)
        self.by_name = {job.name: job for job in self.jobs}
        self.python = str(cfg.get("python") or sys.executable)
        self.status: dict[str, str] = {}

    def job_dir(self, job: Job | str) -> Path:
        return self.run_dir / (job.name if isinstance(job, Job) else job)

    def metrics(self, job: Job | str) -> dict | None:
        path = self.job_dir(job) / "metrics.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def output(self, key: str, source: str) -> Path:
        metrics, folder = self.metrics(source) or {}, self.job_dir(source)
        if key == "init_from":
            return pretrain_outputs(metrics, folder)["encoder"]
        return training_outputs(metrics, folder)["checkpoint"]

    def argv(self, job: Job, threads: int | None = None, placeholders: bool = False) -> list[str]:
        """The job's command line; ``placeholders``: the outputs it needs as ``<job's output>``
        (for listing the commands before those jobs have run)."""
        filled = [f"{key}=<{source}'s {'encoder' if key == 'init_from' else 'checkpoint'}>" if placeholders
                  else f"{key}={self.output(key, source)}" for key, source in job.needs.items()]
        sets_threads = any(o.lstrip("+").startswith("threads=") for o in job.overrides)
        return [self.python, "-m", f"last_lite.{job.command}", *job.overrides, *filled, f"seed={job.seed}",
                *([] if sets_threads or threads is None else [f"threads={threads}"]),
                "ckpt_path=last", f"hydra.run.dir={self.job_dir(job)}"]

    def dry_run(self) -> list[str]:
        """The commands in order (``python -m ...``)."""
        return [" ".join(["python", *self.argv(job, placeholders=True)[1:]]) for job in self.jobs]

    def finished(self, job: Job) -> bool:
        metrics = self.metrics(job)
        return metrics is not None and (job.cell != "P" or self.output("init_from", job.name).is_file())

    def run(self, jobs: int) -> dict[str, str]:
        """Run every job not blocked by a failure, ``jobs`` at a time; returns each job's status
        (done, failed, blocked). SIGTERM or Ctrl-C ends the running commands (each resumes
        from its newest checkpoint when the grid is run again) and propagates."""
        threads = max(1, available_cores() // max(1, jobs))
        pending = list(self.jobs)
        running: dict[str, tuple[subprocess.Popen, float]] = {}
        previous = signal.signal(signal.SIGTERM, interrupt)
        last_progress = time.monotonic()
        try:
            while pending or running:
                for job in list(pending):
                    if len(running) >= jobs:
                        break
                    needs = [self.status.get(source) for source in job.needs.values()]
                    if any(s in ("failed", "blocked") for s in needs):
                        self.status[job.name] = "blocked"
                        pending.remove(job)
                        log.warning("%s: blocked (%s failed)", job.name,
                                    ", ".join(s for s in job.needs.values() if self.status.get(s) != "done"))
                    elif all(s == "done" for s in needs):
                        pending.remove(job)
                        running[job.name] = (self.start(job, threads), time.monotonic())
                for name, (proc, started) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[name]
                    job = self.by_name[name]
                    ok = proc.returncode == 0 and self.finished(job)
                    self.status[name] = "done" if ok else "failed"
                    log.log(logging.INFO if ok else logging.ERROR, "%s: %s after %.0f s%s", name,
                            self.status[name], time.monotonic() - started,
                            "" if ok else f" (exit code {proc.returncode}; log {self.log_path(job)})")
                    self.write_report()
                if running and time.monotonic() - last_progress > float(self.cfg.progress_every_s):
                    last_progress = time.monotonic()
                    for name in running:
                        epoch = last_logged_epoch(self.job_dir(name))
                        log.info("%s: %s", name, "no epoch logged yet" if epoch is None else f"epoch {epoch + 1}")
                time.sleep(0.2 if running else 0)
        except BaseException:
            for proc, _ in running.values():
                proc.terminate()
            for proc, _ in running.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    proc.kill()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.write_report()
        return dict(self.status)

    def job_status(self, job: Job) -> str:
        """done, failed, blocked (this invocation), or what its folder shows: done, the last epoch
        a running or cut-off job logged, not run; done with its encoder absent: a pretraining kept
        only as a record."""
        if job.name in self.status:
            return self.status[job.name]
        if self.finished(job):
            return "done"
        if self.metrics(job) is not None:  # only a pretraining is unfinished with its metrics written
            return f"done, {self.output('init_from', job.name).name} absent"
        epoch = last_logged_epoch(self.job_dir(job))
        return "not run" if epoch is None else f"at epoch {epoch + 1}"

    def log_path(self, job: Job) -> Path:
        return self.run_dir / "logs" / f"{job.name.replace('/', '_')}.log"

    def start(self, job: Job, threads: int) -> subprocess.Popen:
        argv = self.argv(job, threads)
        log_path = self.log_path(job)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.job_dir(job).parent.mkdir(parents=True, exist_ok=True)
        log.info("%s: %s (log %s)", job.name, "read" if self.finished(job) else "running", log_path)
        with open(log_path, "a", encoding="utf-8") as out:
            out.write("$ " + " ".join(argv) + "\n")
            out.flush()
            return subprocess.Popen(argv, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "HYDRA_FULL_ERROR": "1"})

    # -- the report -------------------------------------------------------------------------------
    def teacher(self) -> dict[str, Any] | None:
        """The B and C cells' teacher: the grid's own job (with its test top-1 once finished) or
        the given checkpoint; None when no cell distils."""
        distils = [job for job in self.jobs if job.command == "distill"]
        if not distils:
            return None
        model, job = str(self.cfg.teacher.model), distils[0].needs.get("teacher.ckpt")
        if job is None:  # build_jobs put the given checkpoint in the commands
            return {"model": model, "ckpt": str(self.cfg.teacher.ckpt)}
        top1 = (self.metrics(job) or {}).get("top1")
        return {"model": model, "job": job, "top1": None if top1 is None else 100 * float(top1)}

    def cells(self) -> dict[tuple[str, str], Cell]:
        """(network, cell) -> its finished seeds' test top-1 in percent."""
        out: dict[tuple[str, str], Cell] = {}
        for job in self.jobs:
            metrics = self.metrics(job)
            if job.cell == "P" or not metrics or metrics.get("top1") is None:
                continue
            cell = out.setdefault((job.network, job.cell), Cell((("network", job.network), ("cell", job.cell)), {}))
            cell.top1_by_seed[str(job.seed)] = 100 * float(metrics["top1"])
        return out

    def write_report(self) -> dict[str, Any]:
        predictions = OmegaConf.to_container(self.cfg.get("predictions") or {}, resolve=True)
        cells = self.cells()
        seeds = sorted({job.seed for job in self.jobs})
        rows, differences = [], []
        for network, spec in self.cfg.networks.items():
            if spec is None:
                continue
            for name in spec.cells:
                cell = cells.get((network, name))
                values = list(cell.top1_by_seed.values()) if cell else []
                rows.append({"network": network, "cell": name, "path": CELLS[name],
                             "predicted": (predictions.get(network) or {}).get(name),
                             "top1_by_seed": dict(cell.top1_by_seed) if cell else {},
                             "mean": statistics.mean(values) if values else None,
                             "sd": statistics.stdev(values) if len(values) > 1 else None})
            for name, reference in DIFFERENCES:
                if (network, name) in cells and (network, reference) in cells:
                    diff = paired_difference(cells[(network, name)], cells[(network, reference)])
                    if diff["pairs"]:
                        differences.append({"network": network, "difference": f"{name} - {reference}", **diff})
        record = {"schema": "last_lite.gains/1", "run_dir": str(self.run_dir), "teacher": self.teacher(),
                  "cells": rows, "differences": differences,
                  "jobs": {job.name: self.job_status(job) for job in self.jobs}}
        atomic_write_text(self.run_dir / "gains.json", json.dumps(record, indent=1) + "\n")
        atomic_write_text(self.run_dir / "gains.md", render(record, seeds))
        return record


def _num(value: float | None, sign: bool = False) -> str:
    return "" if value is None else (f"{value:+.2f}" if sign else f"{value:.2f}")


def _teacher_line(teacher: dict | None) -> list[str]:
    if teacher is None:
        return []
    if "ckpt" in teacher:
        return ["", f"The teacher of the B and C cells: {teacher['model']}, `{teacher['ckpt']}`."]
    score = "" if teacher["top1"] is None else f", test top-1 {teacher['top1']:.2f}"
    return ["", f"The teacher of the B and C cells: this grid's {teacher['job']}{score}."]


def render(record: dict, seeds: list[int]) -> str:
    lines = ["# Expected-gain tables", "",
             "Test top-1 (%) of the checkpoint each run's selection rule handed on, by seed; sd over "
             "seeds (n - 1).", *_teacher_line(record.get("teacher")), "",
             "| network | cell | path | the note predicts | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | sd |", "|---|---|---|---|" + "---:|" * (len(seeds) + 2)]
    for row in record["cells"]:
        by_seed = [_num(row["top1_by_seed"].get(str(s))) or "-" for s in seeds]
        lines.append(f"| {row['network']} | {row['cell']} | {row['path']} | {row['predicted'] or ''} | "
                     + " | ".join(by_seed) + f" | {_num(row['mean'])} | {_num(row['sd'])} |")
    lines += ["", "Paired differences (the seeds both cells ran; t = mean / (sd / sqrt(pairs)), "
              "pairs - 1 degrees of freedom):", "",
              "| network | difference | pairs | mean | sd | t |", "|---|---|---:|---:|---:|---:|"]
    for d in record["differences"]:
        lines.append(f"| {d['network']} | {d['difference']} | {d['pairs']} | {_num(d['mean'], sign=True)} | "
                     f"{_num(d['sd'])} | {_num(d['t'])} |")
    waiting = [name for name, status in record["jobs"].items() if not status.startswith("done")]
    if waiting:
        lines += ["", "Not finished: " + ", ".join(f"{n} ({record['jobs'][n]})" for n in waiting) + "."]
    return "\n".join(lines) + "\n"


@hydra.main(config_path="../../conf", config_name="gains", version_base="1.3")
def main(cfg: DictConfig) -> None:
    take_stage_choices(cfg)
    run_dir = Path(str(cfg.run_dir)).expanduser().resolve()
    if not isinstance(cfg.jobs, int) or cfg.jobs < 1:
        raise SystemExit(f"error: jobs must be a whole number >= 1 (jobs side by side), got {cfg.jobs!r}")
    try:
        grid = Grid(cfg, run_dir, Path.cwd())
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if cfg.dry_run:
        print("\n".join(grid.dry_run()))
        return
    if cfg.report_only:
        grid.write_report()
        print((run_dir / "gains.md").read_text(encoding="utf-8"))
        return
    try:
        with FileLock(run_dir / ".gains.lock", wait=False, what="another gains run"):
            status = grid.run(cfg.jobs)
    except LockHeld as exc:  # two grids in one folder would start the same jobs twice
        raise SystemExit(f"error: {exc}: it is running in {run_dir}") from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the running jobs were ended, each resumable
        print(f"interrupted: rerun the same command to continue (each job resumes from its newest "
              f"checkpoint); {run_dir / 'gains.md'} shows where the grid stands", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    print((run_dir / "gains.md").read_text(encoding="utf-8"))
    failed = sorted(name for name, s in status.items() if s != "done")
    if failed:
        raise SystemExit("not finished: " + ", ".join(f"{n} ({status[n]}; log {grid.log_path(grid.by_name[n])})"
                                                      for n in failed))


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "gains")
