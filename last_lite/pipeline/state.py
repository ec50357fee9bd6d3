"""Resumable stages: a JSON state file, a config hash per stage, subprocess runs.

A *stage* is one command of the package (``train``, ``distill``, ``pretrain``, ``export``) run as
``python -m last_lite.<command> <overrides> hydra.run.dir=<run folder>/<stage>`` in a subprocess,
so each has its own Hydra run and a crash stays inside it.

Identity: the SHA-256 of the stage's own composed config (the command's root config with the
stage's overrides: data, model, recipe, seed...) less its execution keys (where and how it runs
and logs: ``paths``, ``threads``, ``logger``, ``teacher.compile``...;
``last_lite.config_checks.EXECUTION_KEYS``), its overrides and the fingerprints of the stages it
consumes (their metrics.json), with the pipeline run folder written as ``${run}`` so a copied run
folder keeps its hashes. The pipeline's thresholds are not part of it: changing one
reuses every finished stage.

The state file ``<run folder>/pipeline_state.json`` (written atomically) records per stage its
status (``running`` / ``done`` / ``failed``), hash, command, outputs (relative to the run
folder) and what the latest pipeline invocation did with it (``ran`` / ``reused`` / ``forced``).

A stage is ``done`` only after its metrics.json (and the outputs its consumers need) exist. On a
rerun a stage is reused when it is done, its hash matches and its outputs are still there. A
training stage (train, distill, pretrain) that was interrupted (its record still says ``running``,
its process is gone: a session ended, the machine rebooted) with the same hash resumes in place
from the furthest on of its ``checkpoints/last.ckpt`` and ``step.ckpt`` (``ckpt_path=``, the log
appended), so a tree whose stages outlast one sitting still advances. Otherwise the folder
(half-written, failed, stale or forced) is moved aside into ``_aside/`` and the stage runs again
from scratch. ``tree.force`` is kept in the state file until a run completes, so the same command
run again after a cut continues the redo instead of forcing the redone stages once more.

Independent stages may run side by side (:meth:`StageRunner.ensure_all`, the tree's ``jobs``);
each then gets ``threads=<cores / jobs>`` unless its overrides set ``threads``. Resume and thread
arguments are how a stage runs, not what it computes: they are left out of its identity.

Adoption: a stage that is not done may instead take a finished run made outside the pipeline
(``tree.adopt.<stage>=<run folder>``, e.g. a Path A run trained by hand). The run's resolved
``config.yaml`` must equal the stage's composed config, except for where and how it ran (``hydra``,
``paths``, output folders, ``threads``, ``ckpt_path``, ``logger``, cache folders); two paths are equal when they
name the same file, files with the same bytes, or checkpoints holding the same weights. A run made
before a config group was renamed (``distill:`` for today's ``kd:``, ``export:`` / ``backend:``,
``pretrain:`` / ``maskclr:``; ``last_lite.config_checks.RENAMED_GROUPS``) is compared under today's
keys. Any other difference refuses the adoption, naming the keys. The run is copied into the stage's
folder.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from last_lite.config_checks import (current_spelling, differing_keys, flatten_config, former_keys, is_execution_key,
                                     without_execution_keys)
from last_lite.io import atomic_write_json, process_start_id, same_process_alive

log = logging.getLogger("last_lite.pipeline")

STATE_FILE = "pipeline_state.json"
STATE_SCHEMA = "last_lite.pipeline_state/1"
RUN_TOKEN = "${run}"
CWD_TOKEN = "${cwd}"
ASIDE_DIR = "_aside"
LOG_DIR = "logs"
RESUMABLE_COMMANDS = ("train", "distill", "pretrain")  # they take ckpt_path= and write last.ckpt
PROGRESS_EVERY_S = 600.0  # a running training stage's epoch is logged this often


class StageFailed(RuntimeError):
    """A stage's command exited with an error (its log is in ``<run>/logs/<stage>.log``)."""

    def __init__(self, stage: str, returncode: int, log_path: Path, tail: str):
        super().__init__(f"stage {stage!r} failed (exit code {returncode}); log: {log_path}\n{tail}")
        self.stage, self.returncode, self.log_path, self.tail = stage, returncode, log_path, tail


class AdoptionRefused(ValueError):
    """``tree.adopt.<stage>`` names a run that cannot stand in for the stage (the message says why)."""


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Stage:
    """One command of the tree. ``inputs`` name the stages it consumes (their fingerprints join
    its identity); ``outputs(metrics, stage_dir)`` lists the files the stage must have made."""

    name: str
    command: str                       # last_lite.<command>
    overrides: list[str]
    inputs: list[str] = field(default_factory=list)
    required_outputs: Callable[[dict, Path], dict[str, Path]] | None = None
    optional: bool = False             # a failure is recorded, the pipeline goes on

    def argv(self, python: str, stage_dir: Path, run_args: Sequence[str] = ()) -> list[str]:
        """``run_args``: how this run goes (``ckpt_path=``, ``threads=``), not part of the identity."""
        return [python, "-m", f"last_lite.{self.command}", *self.overrides, *run_args,
                f"hydra.run.dir={stage_dir}"]


def rebase(path: str | None, recorded_dir: str | None, stage_dir: Path) -> Path | None:
    """A path the stage recorded (absolute, in the folder it ran in) inside ``stage_dir`` now:
    a run folder copied or moved elsewhere still finds its checkpoints."""
    if not path:
        return None
    p = Path(path)
    if recorded_dir:
        try:
            return stage_dir / p.relative_to(Path(recorded_dir))
        except ValueError:
            pass
    return p


def training_outputs(metrics: dict, stage_dir: Path) -> dict[str, Path]:
    """train / distill: the checkpoint chosen on validation."""
    ckpt = rebase(metrics.get("checkpoint"), metrics.get("output_dir"), stage_dir)
    return {"checkpoint": ckpt} if ckpt else {"checkpoint": stage_dir / "checkpoints" / "best.ckpt"}


def pretrain_outputs(metrics: dict, stage_dir: Path) -> dict[str, Path]:
    """pretrain: metrics.json is written twice; done once it names the saved encoder."""
    encoder = rebase(metrics.get("encoder"), metrics.get("output_dir"), stage_dir)
    return {"encoder": encoder if encoder else stage_dir / "encoder.safetensors"}


def export_outputs(metrics: dict, stage_dir: Path) -> dict[str, Path]:
    out = {"report": stage_dir / "report.json"}
    for name, facts in (metrics.get("files") or {}).items():
        rebased = rebase(facts.get("path"), metrics.get("output_dir"), stage_dir)
        if rebased:
            out[f"model_{name}"] = rebased
    return out


class PipelineState:
    """The state file of one pipeline run folder."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_FILE
        if self.path.is_file():
            data = json.loads(self.path.read_text())
        else:
            data = {}
        self.data: dict[str, Any] = {"schema": STATE_SCHEMA, "stages": {}, "invocations": [], **data}

    @property
    def stages(self) -> dict[str, dict]:
        return self.data["stages"]

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def metrics(self, name: str) -> dict:
        return json.loads((self.stage_dir(name) / "metrics.json").read_text())

    def output(self, name: str, key: str) -> Path:
        """An output of a finished stage (recorded relative to the run folder), as a path."""
        value = Path(self.stages[name]["outputs"][key])
        return value if value.is_absolute() else self.run_dir / value

    def resume_files(self, name: str) -> list[Path]:
        """A training stage's checkpoints a resume can start from: the epoch-end ``last.ckpt`` and
        the every-N-steps ``step.ckpt`` (``callbacks.step_checkpoint``), those present."""
        folder = self.stage_dir(name) / "checkpoints"
        return [p for p in (folder / "last.ckpt", folder / "step.ckpt") if p.is_file()]

    def continue_force(self, force: Sequence[str]) -> list[str]:
        """The stages this invocation's ``tree.force`` still redoes. Rerunning the command of an
        invocation that was cut (or failed) with the same ``tree.force`` continues its redo: the
        stages it already started redoing are not forced again (an interrupted one resumes from
        its checkpoint), else every sitting would start the redo over. A run that completes (or
        stops at a decision) ends the redo: forcing again then redoes again."""
        pending = self.data.get("pending_force")
        if force and pending and sorted(pending["stages"]) == sorted(set(force)):
            started = set(pending["started"])
            if started:
                log.info("tree.force: continuing the redo of an unfinished invocation; %s already "
                         "redone or being redone, not forced again", ", ".join(sorted(started)))
            return [name for name in force if name not in started]
        self.data["pending_force"] = {"stages": sorted(set(force)), "started": []} if force else None
        return list(force)

    def note_forced(self, name: str) -> None:
        pending = self.data.get("pending_force")
        if pending is not None and name not in pending["started"]:
            pending["started"].append(name)

    def fingerprint(self, name: str) -> str:
        """What a consumer of stage ``name`` saw: its metrics.json (a rerun changes wall_time_s)."""
        return file_sha256(self.stage_dir(name) / "metrics.json")[:16]


class Lock:
    """``<run>/.pipeline.lock``: one pipeline per run folder at a time (``last_lite.io.FileLock``:
    an ``flock`` taken atomically and released by the kernel when the holder dies, so two
    pipelines can never both hold it and a killed one never leaves it stale)."""

    def __init__(self, run_dir: Path):
        from last_lite.io import FileLock

        self.path = Path(run_dir) / ".pipeline.lock"
        self._lock = FileLock(self.path, wait=False, what="another pipeline")

    def __enter__(self) -> "Lock":
        from last_lite.io import LockHeld

        try:
            self._lock.__enter__()
        except LockHeld as exc:
            raise RuntimeError(f"{exc}: it is running in {self.path.parent}") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)


#: The exit status of a pipeline or grid ended by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports
#: Ctrl-C): its summary says how to continue, so no traceback.
INTERRUPTED_EXIT = 130


def interrupt(signum, frame):
    """A signal handler: SIGTERM (a session's end) unwinds like Ctrl-C, so children are ended."""
    raise KeyboardInterrupt(f"signal {signum}")


def take_stage_choices(cfg) -> None:
    """Record this Hydra run's ``data=`` / ``experiment=`` choices in ``cfg.stage_choices``: their
    names are passed on to every command the pipeline (or the gains grid) runs."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    choices = HydraConfig.get().runtime.choices
    with open_dict(cfg):
        for group in ("data", "experiment"):
            if choices.get(group) is not None:
                cfg.stage_choices[group] = choices[group]


def run_subprocess(argv: Sequence[str], log_path: Path, cwd: Path, on_start: Callable[[int], None],
                   append: bool = False) -> int:
    """Run ``argv`` with stdout+stderr into ``log_path`` (``append``: after a resumed stage's earlier
    log); a signal to the pipeline ends the child too (no orphan keeps writing into a stage folder
    the next run would move aside)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    with open(log_path, "a" if append else "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        on_start(proc.pid)
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, interrupt)
        except ValueError:  # not the main thread
            previous = None
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def changed_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any], limit: int = 20) -> list[str]:
    """The identity entries that differ (why a finished stage is stale)."""
    if not old:
        return []
    return differing_keys(old, new)[0][:limit]


def _same_weights(a: Path, b: Path) -> bool:
    if a.is_file() and b.is_file() and file_sha256(a) == file_sha256(b):
        return True
    try:
        import torch

        from last_lite.training.checkpoints import load_model_weights

        wa, wb = load_model_weights(str(a)), load_model_weights(str(b))
    except Exception:  # not a checkpoint either of them
        return False
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def in_current_keys(run_cfg: Mapping[str, Any], stage_cfg: Mapping[str, Any], command: str | None) -> dict[str, Any]:
    """``run_cfg`` (a run's saved config.yaml) with the top-level keys of groups renamed since it
    ran under today's names, where the stage's config has the new key and the run only the former
    one: a distill run's ``distill:`` block is its ``kd:`` block."""
    out = dict(run_cfg)
    for key in stage_cfg:
        if key in out:
            continue
        for former in former_keys(str(key), command):
            if former in out and former not in stage_cfg:
                out[key] = out.pop(former)
                break
    return out


def adoption_differences(stage_cfg: Mapping[str, Any], run_cfg: Mapping[str, Any],
                         stage_dir: Path, run_dir: Path, limit: int = 12,
                         command: str | None = None) -> list[str]:
    """What keeps a finished run from standing in for a stage (empty: it may be adopted).
    ``command``: the stage's command, whose former group names in ``run_cfg`` are read as today's."""
    def rebased(value: Any, own_dir: Path) -> Any:
        if isinstance(value, str) and value.startswith(str(own_dir)):
            return "<output_dir>" + value[len(str(own_dir)):]
        return value

    run_cfg = in_current_keys(run_cfg, stage_cfg, command)

    run_dir = Path((run_cfg.get("paths") or {}).get("output_dir") or run_dir)  # where it ran
    a, b = flatten_config(dict(stage_cfg)), flatten_config(dict(run_cfg))
    out = []
    for key in sorted(set(a) | set(b)):
        if is_execution_key(key):  # where and how a run executed, not what it computed
            continue
        va, vb = rebased(a.get(key, "<absent>"), stage_dir), rebased(b.get(key, "<absent>"), run_dir)
        if va == vb:
            continue
        if isinstance(va, str) and isinstance(vb, str) and Path(va).exists() and Path(vb).exists():
            pa, pb = Path(va), Path(vb)
            if pa.resolve() == pb.resolve() or _same_weights(pa, pb):
                continue
        out.append(f"{key}: stage {va!r} vs run {vb!r}")
    return out[:limit]


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


class StageRunner:
    """Runs or reuses stages of one run folder.

    ``identity(stage) -> dict`` gives the stage's identity (its composed config); the runner adds
    the command, the overrides and the inputs' fingerprints, writes ``${run}`` for the run folder
    and hashes the result.
    """

    def __init__(self, state: PipelineState, identity: Callable[[Stage], Mapping[str, Any]],
                 force: Sequence[str] = (), python: str | None = None, cwd: Path | None = None,
                 runner: Callable[..., int] = run_subprocess, adopt: Mapping[str, Any] | None = None):
        self.state = state
        self.adopt = {k: Path(v).expanduser().resolve() for k, v in (adopt or {}).items() if v}
        self.identity = identity
        self.force = set(force)
        self.python = python or sys.executable
        self.cwd = Path(cwd or os.getcwd())
        self.runner = runner
        self.actions: dict[str, str] = {}
        self._lock = threading.RLock()  # state and actions, when ensure_all runs stages side by side
        self._interrupted = False
        self.progress_every_s = PROGRESS_EVERY_S

    # -- identity ---------------------------------------------------------------------------
    def stage_hash(self, stage: Stage) -> tuple[str, dict]:
        ident = {"command": stage.command,  # overrides in today's spelling: a former one is the same stage
                 "overrides": [current_spelling(o, stage.command) for o in stage.overrides
                               if not o.startswith("hydra.")],
                 # what the stage computes: a change of how it runs or logs does not make it stale
                 "config": without_execution_keys(self.identity(stage)),
                 "inputs": {name: self.state.fingerprint(name) for name in stage.inputs}}
        text = json.dumps(ident, sort_keys=True, default=str)
        text = text.replace(str(self.state.run_dir.resolve()), RUN_TOKEN).replace(str(self.state.run_dir), RUN_TOKEN)
        text = text.replace(str(self.cwd.resolve()), CWD_TOKEN)
        return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)

    # -- completeness -------------------------------------------------------------------------
    def outputs_of(self, stage: Stage) -> dict[str, Path] | None:
        """The stage's outputs if its folder holds a complete run, else None."""
        outputs, missing = self._outputs(stage)
        return None if missing else outputs

    def _outputs(self, stage: Stage) -> tuple[dict[str, Path], list[str]]:
        """The stage's outputs and which of them are missing (or unreadable)."""
        stage_dir = self.state.stage_dir(stage.name)
        metrics_file = stage_dir / "metrics.json"
        if not metrics_file.is_file():
            return {}, [str(metrics_file)]
        try:
            metrics = json.loads(metrics_file.read_text())
        except ValueError:
            return {}, [f"{metrics_file} (not JSON)"]
        outputs = {"metrics": metrics_file}
        if stage.required_outputs is not None:
            outputs.update(stage.required_outputs(metrics, stage_dir))
        return outputs, [str(p) for p in outputs.values() if not Path(p).exists()]

    def _relative(self, outputs: Mapping[str, Path]) -> dict[str, str]:
        rel = {}
        for key, path in outputs.items():
            try:
                rel[key] = str(Path(path).resolve().relative_to(self.state.run_dir.resolve()))
            except ValueError:
                rel[key] = str(path)
        return rel

    def output(self, name: str, key: str) -> Path:
        """An output of a finished stage, as a path in this run folder."""
        return self.state.output(name, key)

    def move_aside(self, name: str, reason: str) -> Path | None:
        stage_dir = self.state.stage_dir(name)
        if not stage_dir.exists():
            return None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        target = self.state.run_dir / ASIDE_DIR / f"{name}.{reason}.{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage_dir), str(target))
        log.info("stage %s: moved its %s folder aside to %s", name, reason, target)
        return target

    def adopt_run(self, stage: Stage, source: Path, digest: str, ident: dict) -> dict:
        """Copy a finished run made outside the pipeline into the stage (see the module doc)."""
        from omegaconf import OmegaConf

        if not (source / "metrics.json").is_file() or not (source / "config.yaml").is_file():
            raise AdoptionRefused(f"tree.adopt.{stage.name}: {source} is not a finished run "
                             f"(it needs metrics.json and config.yaml)")
        stage_dir = self.state.stage_dir(stage.name)
        differences = adoption_differences(self.identity(stage), OmegaConf.to_container(OmegaConf.load(source / "config.yaml")),
                                           stage_dir, source, command=stage.command)
        if differences:
            raise AdoptionRefused(f"tree.adopt.{stage.name}: {source} was not made with this stage's "
                             f"config; differences:\n  " + "\n  ".join(differences))
        aside = self.move_aside(stage.name, "adopted-over")
        # Copied under a temp name first: a copy cut short never sits at the stage's folder.
        tmp_dir = stage_dir.with_name(f".{stage_dir.name}.adopt-tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        shutil.copytree(source, tmp_dir, ignore=shutil.ignore_patterns(".pipeline.lock"))
        os.replace(tmp_dir, stage_dir)
        outputs = self.outputs_of(stage)
        if outputs is None:
            shutil.rmtree(stage_dir)
            raise AdoptionRefused(f"tree.adopt.{stage.name}: {source} lacks the outputs the stage "
                             f"must have (its checkpoint or encoder)")
        record = {"status": "done", "hash": digest, "command": stage.command, "overrides": list(stage.overrides),
                  "identity": ident, "inputs": list(stage.inputs), "stage_dir": stage.name,
                  "adopted_from": str(source), "adopted_at": now(), "last_action": "adopted",
                  "moved_aside": str(aside.relative_to(self.state.run_dir)) if aside else None,
                  "outputs": self._relative(outputs), "runs": 0}
        self.state.stages[stage.name] = record
        self.actions[stage.name] = "adopted"
        self.state.save()
        log.info("stage %s: adopted %s (hash %s)", stage.name, source, digest)
        return record

    # -- run or reuse ---------------------------------------------------------------------------
    def resume_checkpoint(self, stage: Stage, record: Mapping[str, Any], digest: str) -> Path | None:
        """The checkpoint an interrupted training stage with this hash resumes from (the furthest
        on of ``last.ckpt`` and ``step.ckpt``), else None."""
        if stage.command not in RESUMABLE_COMMANDS or stage.name in self.force:
            return None
        if record.get("status") != "running" or record.get("hash") != digest:
            return None  # a failed stage starts over: what it saved may be what failed
        from last_lite.training.checkpoints import newest_checkpoint

        try:
            return newest_checkpoint(self.state.resume_files(stage.name))
        except ValueError as exc:  # a damaged checkpoint: the stage starts over, its folder moved aside
            log.warning("stage %s: cannot resume (%s)", stage.name, exc)
            return None

    def ensure(self, stage: Stage, run_args: Sequence[str] = ()) -> dict:
        """Reuse the stage if it is done with the same hash, resume it if it was interrupted, else
        (re)run it. Returns its state record; raises :class:`StageFailed` when the command fails
        (the state says ``failed``). ``run_args``: extra arguments of how it runs (``threads=``).
        Safe to call from several threads (:meth:`ensure_all`)."""
        with self._lock:
            if self._interrupted:  # ensure_all's other stages: none starts once an interrupt ends them
                raise KeyboardInterrupt("interrupted before this stage started")
            digest, ident = self.stage_hash(stage)
            record = self.state.stages.get(stage.name) or {}
            outputs = self.outputs_of(stage)
            forced = stage.name in self.force
            if (not forced and record.get("status") == "done" and record.get("hash") == digest
                    and outputs is not None):
                # a stage this invocation already ran (ensure_all) keeps "ran" when the walk reaches it
                if self.actions.get(stage.name) not in ("ran", "forced", "resumed", "adopted"):
                    self.actions[stage.name] = "reused"
                record["last_action"] = self.actions[stage.name]
                record["outputs"] = self._relative(outputs)
                self.state.save()
                log.info("stage %s: reused (hash %s)", stage.name, digest)
                return record

            if not forced and stage.name in self.adopt and not (record.get("status") == "done"
                                                                and outputs is not None):
                return self.adopt_run(stage, self.adopt[stage.name], digest, ident)

            if stage_process_alive(record):
                raise RuntimeError(f"stage {stage.name} is still running (pid {record['pid']})")
            resume_from = self.resume_checkpoint(stage, record, digest)
            changed: list[str] = []
            aside = None
            if resume_from is not None:
                reason = "resumed"
                run_args = [f"ckpt_path={resume_from.resolve()}", *run_args]
            else:
                if forced:
                    reason = "forced"
                    self.state.note_forced(stage.name)
                elif record.get("status") == "done" and outputs is not None:
                    reason = "stale"      # its config (or an input) changed
                elif not record and not self.state.stage_dir(stage.name).exists():
                    reason = "new"
                else:
                    reason = "incomplete"  # failed, interrupted before a checkpoint, never recorded
                changed = changed_keys(record.get("identity"), ident) if reason == "stale" else []
                aside = self.move_aside(stage.name, reason)
            stage_dir = self.state.stage_dir(stage.name)
            argv = stage.argv(self.python, stage_dir, run_args)
            log_path = self.state.run_dir / LOG_DIR / f"{stage.name}.log"
            record = {"status": "running", "hash": digest, "command": stage.command,
                      "argv": argv[1:], "overrides": list(stage.overrides), "identity": ident,
                      "inputs": list(stage.inputs), "stage_dir": stage.name,
                      "log": str(log_path.relative_to(self.state.run_dir)), "started_at": now(),
                      "reason": reason, "changed": changed,
                      "moved_aside": str(aside.relative_to(self.state.run_dir)) if aside else None,
                      "runs": int(record.get("runs", 0)) + 1}
            if resume_from is not None:
                record["resumed_from"] = str(resume_from.relative_to(self.state.run_dir))
            self.state.stages[stage.name] = record
            self.state.save()
            log.info("stage %s: running (%s%s; hash %s; log %s): %s", stage.name, reason,
                     f": {', '.join(changed[:5])} changed" if changed else "", digest, log_path,
                     " ".join(argv))

        def on_start(pid: int) -> None:
            with self._lock:
                if self._interrupted:  # started as terminate_running took its list: end it too
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                record["pid"] = pid
                record["pid_start_id"] = process_start_id(pid)  # a later process with this pid is not it
                self.state.save()

        stop_watching = threading.Event()
        if stage.command in RESUMABLE_COMMANDS:
            max_epochs = ((ident.get("config") or {}).get("trainer") or {}).get("max_epochs")
            threading.Thread(target=self._log_progress, args=(stage.name, max_epochs, stop_watching),
                             daemon=True).start()
        try:
            returncode = self.runner(argv, log_path, self.cwd, on_start,
                                     **({"append": True} if resume_from is not None else {}))
        finally:
            stop_watching.set()
        with self._lock:
            if self._interrupted:  # ended by terminate_running: left "running", so a rerun resumes it
                return record
            return self._finish(stage, record, returncode, log_path, forced)

    def _log_progress(self, name: str, max_epochs: int | None, stop: threading.Event) -> None:
        """Every ``progress_every_s``: the running stage's epoch (its full log: logs/<stage>.log)."""
        started = time.monotonic()
        while not stop.wait(self.progress_every_s):
            epoch = last_logged_epoch(self.state.stage_dir(name))
            where = "no epoch logged yet" if epoch is None else f"epoch {epoch + 1}/{max_epochs or '?'}"
            log.info("stage %s: %s, %.0f min in", name, where, (time.monotonic() - started) / 60)

    def _finish(self, stage: Stage, record: dict, returncode: int, log_path: Path, forced: bool) -> dict:
        record["returncode"] = returncode
        record["finished_at"] = now()
        record.pop("pid", None)
        record.pop("pid_start_id", None)
        outputs, missing = self._outputs(stage) if returncode == 0 else ({}, [])
        if returncode != 0 or missing:
            record["status"] = "failed"
            self.actions[stage.name] = "failed"
            record["last_action"] = "failed"
            self.state.save()
            tail = log_tail(log_path)
            if returncode == 0:
                tail = f"the command exited 0 but did not write {', '.join(missing)}\n" + tail
            raise StageFailed(stage.name, returncode, log_path, tail)
        record["status"] = "done"
        record["outputs"] = self._relative(outputs)
        self.force.discard(stage.name)  # once per invocation: the walk reaching it again reuses it
        action = "forced" if forced else "resumed" if record["reason"] == "resumed" else "ran"
        record["last_action"] = action
        self.actions[stage.name] = action
        self.state.save()
        return record

    def ensure_all(self, stages: Sequence[Stage], jobs: int) -> None:
        """Ensure ``stages`` (independent of each other), up to ``jobs`` at a time, each with
        ``threads=<cores / jobs>`` unless its overrides set ``threads``. Waits for all of them;
        then raises the first :class:`StageFailed` in ``stages``' order. An interrupt (Ctrl-C,
        SIGTERM) ends the running stages' processes before it propagates."""
        if jobs <= 1 or len(stages) <= 1:
            for stage in stages:
                self.ensure(stage)
            return
        cores = available_cores()
        if jobs > cores:
            log.warning("tree.jobs=%d on %d cores: the stages will share cores (one thread each)", jobs, cores)
        threads = max(1, cores // jobs)

        def run_args(stage: Stage) -> list[str]:
            sets_threads = any(o.lstrip("+").startswith("threads=") for o in stage.overrides)
            return [] if sets_threads or stage.command not in RESUMABLE_COMMANDS else [f"threads={threads}"]

        previous = signal.getsignal(signal.SIGTERM)
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:  # as run_subprocess does for one stage: SIGTERM unwinds, children are ended
            signal.signal(signal.SIGTERM, interrupt)
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage")
        futures = [pool.submit(self.ensure, stage, run_args(stage)) for stage in stages]
        try:
            for future in futures:
                future.exception()  # wait for every stage, failed or not
        except BaseException:
            self.terminate_running()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=True)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()

    def terminate_running(self) -> None:
        """SIGTERM every stage process this runner started that is still running."""
        with self._lock:
            self._interrupted = True
            running = [dict(r) for r in self.state.stages.values()]
        for record in running:
            if stage_process_alive(record):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(record["pid"]), signal.SIGTERM)


def stage_process_alive(record: Mapping[str, Any]) -> bool:
    """Whether a stage recorded as running still has its process (one other than this one: the
    pid with its start id, so a later process that got the same pid is not taken for it)."""
    pid = int(record.get("pid") or 0)
    return (record.get("status") == "running" and pid not in (0, os.getpid())
            and same_process_alive(pid, record.get("pid_start_id")))


def last_logged_epoch(stage_dir: Path) -> int | None:
    """The epoch (0-based) of the last training row a run's CSV logger flushed, if any (the test
    after fit logs one epoch past the last)."""
    try:
        with open(stage_dir / "csv" / "metrics.csv", newline="", encoding="utf-8") as fh:
            epochs = [row["epoch"] for row in csv.DictReader(fh)
                      if row.get("epoch") and any(v for k, v in row.items() if k and k.startswith("train/"))]
    except (OSError, KeyError, csv.Error):
        return None
    return int(float(epochs[-1])) if epochs else None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
