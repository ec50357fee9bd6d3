"""``python -m last_lite.pipeline data=<data> [experiment=<exp>] [hydra.run.dir=<run folder>]``.

Walks the decision tree (:mod:`last_lite.pipeline.tree`): Path A (teacher, then the reference),
Path B (distillation into each student), Path C where the rule asks for it, then INT8 ONNX
export of each student's checkpoint chosen on validation; writes ``report.md``, ``report.json``
and ``plots/`` into the run folder.

Rerun the same command with the same ``hydra.run.dir`` (or ``run_dir=``) to resume: finished
stages whose config hash matches are reused, an interrupted training stage resumes from its
checkpoint, any other half-written one is moved aside and redone,
``tree.force=[stage,...]`` redoes the named stages (and, through their new outputs, every
stage downstream; rerunning a cut invocation with the same ``tree.force`` continues its redo).
Changing a threshold (``tree.thresholds.*``) reuses every stage.

The tree's settings are the ``tree`` group (conf/tree/); the former spellings
``pipeline=<preset>`` / ``pipeline.*`` are rewritten to ``tree=`` / ``tree.*`` with a warning
(``last_lite.config_checks.legacy_overrides``, in ``run_cli``).

Exit status: 0 when the tree completed or stopped at a decision (the report says which), 1 when
a stage failed (the report names it and its log). Interrupted (Ctrl-C, SIGTERM), it ends the
running stages' processes, writes the report so far (status ``interrupted``) and exits non-zero;
stopped by any other error, it writes the report (status ``error``) before the error propagates,
so a report from an earlier invocation never outlives the state it described.
``python -m last_lite.pipeline.status <run folder>`` shows where a run stands, also while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from last_lite.pipeline.state import (INTERRUPTED_EXIT, AdoptionRefused, Lock, PipelineState, Stage,
                                      StageFailed, StageRunner, interrupt, now, take_stage_choices)
from last_lite.pipeline.tree import CONF_DIR, Tree

log = logging.getLogger("last_lite.pipeline")


@contextlib.contextmanager
def _hydra_context():
    """The stages' configs are composed with Hydra's compose API: inside the Hydra app it is
    ready; called from Python (tests), initialise it on the package's conf/ for the call."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def stage_identity(run_dir: Path, cwd: Path):
    """The stage's own config, composed from its command's root config and its overrides and
    resolved (``paths.root_dir`` = the working directory, ``paths.output_dir`` = its folder).
    Former spellings of renamed groups among the overrides (``distill.alpha=0.3`` in a distill
    stage's ``tree.students.<s>.overrides``) are read as today's, as the stage's command reads them
    (``last_lite.config_checks.legacy_overrides``), with one warning each."""
    from hydra import compose

    from last_lite.config_checks import current_spelling

    warned: set[tuple[str, str]] = set()

    def identity(stage: Stage) -> dict[str, Any]:
        overrides = []
        for o in stage.overrides:
            if o.startswith(("hydra.", "hydra/", "+hydra")):
                continue
            current = current_spelling(o, stage.command)
            if current != o and (stage.name, o) not in warned:
                warned.add((stage.name, o))
                log.warning("stage %s: %s is the former spelling of %s; rewritten", stage.name, o, current)
            overrides.append(current)
        cfg = compose(config_name=stage.command, overrides=overrides)
        if "paths" in cfg:
            with open_dict(cfg):
                cfg.paths.root_dir = str(cwd)
                cfg.paths.output_dir = str(run_dir / stage.name)
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # an interpolation only the stage's own Hydra run can resolve
            return OmegaConf.to_container(cfg, resolve=False)

    return identity


def run(cfg: DictConfig, runner_fn=None) -> dict[str, Any]:
    """Walk the tree in ``cfg.run_dir``; returns the report record (also on a stage failure,
    with ``status: failed``). ``runner_fn`` replaces the subprocess runner (tests)."""
    from last_lite.pipeline.report import write_report

    run_dir = Path(str(cfg.run_dir)).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path(os.getcwd())
    force = [str(s) for s in (cfg.tree.get("force") or [])]
    with _hydra_context(), Lock(run_dir):
        state = PipelineState(run_dir)
        kwargs = {} if runner_fn is None else {"runner": runner_fn}
        adopt = cfg.tree.get("adopt")
        adopt = OmegaConf.to_container(adopt, resolve=True) if adopt is not None else {}
        runner = StageRunner(state, stage_identity(run_dir, cwd), force=state.continue_force(force),
                             python=cfg.get("python"), cwd=cwd, adopt=adopt, **kwargs)
        tree = Tree(cfg, state, runner)
        tree.check_stage_names(force, adopt)
        log.info("every training stage gets: %s", " ".join(tree.common()) or "the commands' defaults")
        invocation: dict[str, Any] = {"started_at": now(), "argv": list(sys.argv), "force": force,
                                      "thresholds": OmegaConf.to_container(cfg.tree.thresholds,
                                                                           resolve=True)}
        interrupted: KeyboardInterrupt | None = None
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous_sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
        if on_main_thread:  # SIGTERM (a session's end) unwinds like Ctrl-C wherever it lands
            signal.signal(signal.SIGTERM, interrupt)
        try:
            tree.run()
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (a session's end): stages stay resumable
            interrupted = exc
            tree.outcome["status"] = "interrupted"
            tree.outcome["warnings"].append(
                "interrupted: rerun the same command to continue (a training stage resumes from its "
                "checkpoint); `python -m last_lite.pipeline.status <run folder>` shows where it stands")
        except StageFailed as exc:
            tree.outcome["status"] = "failed"
            tree.outcome["failures"].append(
                f"stage {exc.stage} failed (exit code {exc.returncode}); log: {exc.log_path}")
            log.error("%s", exc)
        except AdoptionRefused as exc:
            tree.outcome["status"] = "failed"
            tree.outcome["failures"].append(str(exc))
            log.error("%s", exc)
        except Exception as exc:
            tree.outcome["status"] = "error"
            tree.outcome["failures"].append(f"stopped by an error: {type(exc).__name__}: {exc}")
            raise
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous_sigterm)
            if tree.outcome["status"] in ("complete", "stopped"):
                state.data["pending_force"] = None  # a later tree.force redoes again
            unknown = sorted(set(force) - set(tree.outcome["stages"]))
            if unknown:
                tree.outcome["warnings"].append(
                    f"tree.force names stages this run did not reach: {', '.join(unknown)}")
            invocation.update(finished_at=now(), status=tree.outcome["status"],
                              actions=dict(runner.actions))
            state.data["invocations"].append(invocation)
            state.data["last_invocation"] = invocation
            state.save()
            report = write_report(cfg, state, runner, tree.outcome, invocation)
    _print_summary(report)
    if interrupted is not None:
        raise interrupted
    return report


def _print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    console.print(f"[bold]pipeline: {report['status']}[/bold]" +
                  (f" - {escape(report['stop_reason'])}" if report.get("stop_reason") else ""))
    for d in report["decisions"]:
        console.print(f"  {d['id']}: {d['outcome']} - {d['reason']}", markup=False)
    actions = report["invocation"].get("actions") or {}
    console.print("  stages: " + ", ".join(f"{k} ({v})" for k, v in actions.items()), markup=False)
    for f in report["failures"] + report["warnings"]:
        console.print(f"  {f}", markup=False)
    console.print(f"  report: {Path(report['run_dir']) / 'report.md'}")


@hydra.main(config_path="../../conf", config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    take_stage_choices(cfg)
    try:
        report = run(cfg)
    except KeyboardInterrupt:  # run() printed the summary, which says how to continue
        raise SystemExit(INTERRUPTED_EXIT) from None
    if report["status"] == "failed":
        raise SystemExit(1)


if __name__ == "__main__":
    from last_lite.config_checks import run_cli

    run_cli(main, "pipeline")
