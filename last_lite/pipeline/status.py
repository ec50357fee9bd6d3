"""``python -m last_lite.pipeline.status <run folder>`` (``make pipeline-status``): where a pipeline
run stands, stage by stage, read from its state file without taking its lock, so it answers while
the pipeline runs (its report.md is written when an invocation ends).

A stage recorded as running whose process is gone (a session ended, the machine rebooted) is
``interrupted``: a training stage then resumes from its checkpoint on the next run, any other
stage is redone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from last_lite.pipeline.state import (RESUMABLE_COMMANDS, STATE_FILE, PipelineState, last_logged_epoch,
                                      stage_process_alive)


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(stamp)).total_seconds()


def stage_status(state: PipelineState, name: str) -> dict[str, Any]:
    """One stage: its status as of now, its epoch (training stages), test top-1 and time."""
    record = state.stages[name]
    status, command = record.get("status"), record.get("command")
    if status == "running" and not stage_process_alive(record):
        status = "interrupted"
    row: dict[str, Any] = {"stage": name, "command": command, "status": status, "epoch": None,
                           "max_epochs": None, "test_top1": None, "time_s": None,
                           "next_run": None, "log": record.get("log")}
    if command in RESUMABLE_COMMANDS:
        epoch = last_logged_epoch(state.stage_dir(name))
        row["epoch"] = None if epoch is None else epoch + 1
        config = (record.get("identity") or {}).get("config") or {}
        row["max_epochs"] = (config.get("trainer") or {}).get("max_epochs")
    if status == "done":
        try:
            metrics = state.metrics(name)
        except FileNotFoundError:  # its folder changed by hand since
            metrics = {}
        row["test_top1"] = metrics.get("top1")
        row["time_s"] = metrics.get("wall_time_total_s", metrics.get("wall_time_s"))
    elif status == "running":
        row["time_s"] = _seconds_since(record.get("started_at"))  # this sitting
    if status == "interrupted":
        files = state.resume_files(name) if command in RESUMABLE_COMMANDS else []
        newest = max(files, key=lambda p: p.stat().st_mtime, default=None)  # the resume reads their steps
        row["next_run"] = f"resumes from checkpoints/{newest.name}" if newest else "starts over"
    elif status == "failed":
        row["next_run"] = "starts over (moved aside first)"
    return row


def pipeline_status(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / STATE_FILE).is_file():
        raise SystemExit(f"no pipeline run in {run_dir} (no {STATE_FILE}): start one with "
                         "`python -m last_lite.pipeline data=<data> hydra.run.dir=<run folder>`")
    state = PipelineState(run_dir)
    return {"run_dir": str(run_dir), "last_invocation": state.data.get("last_invocation"),
            "stages": [stage_status(state, name) for name in state.stages]}


def format_status(status: dict[str, Any]) -> str:
    lines = [f"pipeline run {status['run_dir']}"]
    last = status.get("last_invocation")
    if last:
        lines.append(f"last ended invocation: {last.get('status')} (started {last.get('started_at')}, "
                     f"ended {last.get('finished_at')})")
    lines += ["", "| stage | command | status | epoch | test top-1 | time | next run | log |",
              "|---|---|---|---:|---:|---:|---|---|"]
    for s in status["stages"]:
        epoch = "-" if s["epoch"] is None else f"{s['epoch']}/{s['max_epochs'] or '?'}"
        top1 = "-" if s["test_top1"] is None else f"{100 * s['test_top1']:.2f}%"
        time_s = "-" if s["time_s"] is None else f"{s['time_s'] / 60:,.0f} min"
        lines.append(f"| {s['stage']} | {s['command']} | {s['status']} | {epoch} | {top1} | {time_s} | "
                     f"{s['next_run'] or '-'} | {s['log'] or '-'} |")
    lines += ["", "time: a finished stage's training time over all its sittings; a running one's "
              "time in this sitting. Rerun the pipeline's command to continue."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m last_lite.pipeline.status",
                                     description="Where a pipeline run stands (safe while it runs).")
    parser.add_argument("run_dir", type=Path, help="the pipeline's run folder (its hydra.run.dir)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    status = pipeline_status(args.run_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))


if __name__ == "__main__":
    main()
