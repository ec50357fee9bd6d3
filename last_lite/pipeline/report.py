"""``report.json`` + ``report.md`` + ``plots/`` of a pipeline run folder.

Every accuracy, parameter count, size and latency is copied from a stage's metrics.json (export
stages: their report.json, the same record), never recomputed; each row names the file it came
from. FLOPs are the one number the stages do not record: they are measured here with
:func:`last_lite.models.profile.profile_model` on the stage's checkpoint (cached in the state
file under the stage's hash).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from last_lite.io import atomic_write, atomic_write_json, atomic_write_text
from last_lite.pipeline import plots
from last_lite.pipeline.state import PipelineState, StageRunner
from last_lite.pipeline.status import stage_status
from last_lite.pipeline.tree import ACCURACY_CHOICE, PATH_NAMES, pct, pts, selection_score

log = logging.getLogger("last_lite.pipeline")

REPORT_SCHEMA = "last_lite.pipeline_report/1"


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def profile_stage(state: PipelineState, runner: StageRunner, stage: str) -> dict[str, Any] | None:
    """Parameters and FLOPs per clip of the stage's checkpoint (the data's clip length and
    persons); cached in the state file under the stage's hash."""
    record = state.stages.get(stage) or {}
    cached = record.get("profile")
    if cached and cached.get("hash") == record.get("hash"):
        return cached
    try:
        ckpt = runner.output(stage, "checkpoint")
    except KeyError:
        return None
    try:
        from last_lite.models.profile import profile_model
        from last_lite.models.registry import build_model
        from last_lite.training.checkpoints import load_checkpoint

        hparams = load_checkpoint(ckpt).get("hyper_parameters") or {}
        spec = dict(hparams["model_spec"])
        data = hparams.get("data_spec") or {}
        frames, persons = int(data.get("clip_len", 64)), int(data.get("max_persons", 2))
        prof = profile_model(build_model(spec), frames=frames, persons=persons)
    except Exception as exc:  # a report without FLOPs beats no report
        log.warning("FLOPs of %s not measured: %s", stage, exc)
        return None
    cached = {"hash": record.get("hash"), "flops": int(prof.flops), "params_profiled": int(prof.params),
              "frames": frames, "persons": persons}
    record["profile"] = cached
    state.save()
    return cached


def export_facts(state: PipelineState, stage: str) -> dict[str, Any]:
    """The deployment numbers of an export stage, copied from its report.json."""
    path = state.stage_dir(stage) / "report.json"
    rec = _read(path)
    ev = rec.get("evaluation") or {}
    models = ev.get("models") or {}
    files = rec.get("files") or {}
    lat = rec.get("latency") or {}
    out = {"stage": stage, "report_file": str(path.relative_to(state.run_dir)),
           "backend": rec.get("backend"), "deployable": rec.get("deployable"),
           "split": ev.get("split"), "samples": ev.get("samples"), "params": rec.get("params"),
           "top1": rec.get("top1"), "threads": lat.get("threads"), "top1_drop": ev.get("top1_drop"),
           "parity_passed": (rec.get("parity") or {}).get("passed")}
    for name in ("fp32", "int8", "tensorrt"):
        if name in models or name in files:
            out[name] = {"test_top1": (models.get(name) or {}).get("top1"),
                         "test_top5": (models.get(name) or {}).get("top5"),
                         "bytes": (files.get(name) or {}).get("bytes"),
                         "latency_p50_ms": (lat.get(name) or {}).get("p50_ms"),
                         "latency_batch": (lat.get(name) or {}).get("batch"),
                         "latency_repeats": (lat.get(name) or {}).get("repeats")}
    return out


def model_row(state: PipelineState, runner: StageRunner, stage: str, label: str, role: str,
              path: str, export_stage: str | None = None, deployed: bool = False) -> dict[str, Any]:
    m = state.metrics(stage)
    prof = profile_stage(state, runner, stage)
    val_top1, val_metric, val_size = selection_score(m)
    row = {"label": label, "role": role, "path": path, "model": m.get("model"), "stage": stage,
           "metrics_file": f"{stage}/metrics.json", "published": False,
           "params": m.get("params"), "flops": None if prof is None else prof["flops"],
           "flops_clip": None if prof is None else {"frames": prof["frames"], "persons": prof["persons"]},
           "val_top1": val_top1, "val_metric": val_metric, "val_size": val_size,
           "test_top1": m.get("top1"), "test_top5": m.get("top5"),
           "epochs": m.get("epochs"), "val_is_test": m.get("val_is_test"), "deployed": deployed,
           "export": None}
    if export_stage and (state.stage_dir(export_stage) / "report.json").is_file() \
            and (state.stages.get(export_stage) or {}).get("status") == "done":
        row["export"] = export_facts(state, export_stage)
    return row


def published_points(cfg: DictConfig, dataset: str | None, reference: Mapping[str, Any] | None) -> list[dict]:
    table = OmegaConf.to_container(cfg.tree.get("published_points") or {}, resolve=True)
    points = [dict(p, published=True, dataset=dataset) for p in (table.get(dataset) or [])]
    if reference and reference.get("published"):
        name = reference["name"]
        if not any(p.get("name") == name for p in points):
            points.append({"name": name, "top1": reference["top1"], "params": reference.get("params"),
                           "source": reference.get("source"), "published": True, "dataset": dataset})
    return points


def build_report(cfg: DictConfig, state: PipelineState, runner: StageRunner,
                 outcome: Mapping[str, Any], invocation: Mapping[str, Any]) -> dict[str, Any]:
    stages = list(outcome.get("stages") or [])
    done = {s for s in stages if (state.stages.get(s) or {}).get("status") == "done"}
    rows: list[dict] = []
    if "teacher" in done:
        rows.append(model_row(state, runner, "teacher", f"{cfg.tree.teacher.model} (teacher)",
                              "teacher", "A", export_stage="export_teacher"))
    reference = outcome.get("reference")
    if reference and reference.get("stage") in done:
        rows.append(model_row(state, runner, "reference", f"{reference['name']} (reference)",
                              "reference", "A", export_stage="export_reference"))
    for student, info in (outcome.get("students") or {}).items():
        for path_name in PATH_NAMES:
            stage = (info.get("paths") or {}).get(path_name)
            if stage in done:
                chosen = info.get("deployed") == stage
                rows.append(model_row(state, runner, stage, f"{student} ({path_name})", "student",
                                      path_name, export_stage=info.get("export") if chosen else None,
                                      deployed=chosen and info.get("export") in done))
    pretrain = []
    for student, info in (outcome.get("students") or {}).items():
        stage = (info.get("paths") or {}).get("C_pretrain")
        if stage in done:
            m = state.metrics(stage)
            pretrain.append({"student": student, "stage": stage, "metrics_file": f"{stage}/metrics.json",
                             "best_val_loss": m.get("best_val_loss"), "params": m.get("params"),
                             "epochs": m.get("epochs"), "encoder": state.stages[stage]["outputs"].get("encoder")})

    dataset = None
    if "teacher" in done:
        dataset = state.metrics("teacher").get("dataset")
    published = published_points(cfg, dataset, reference)
    stage_table = []
    for s in stages:
        rec = state.stages.get(s) or {}
        m = state.metrics(s) if s in done else {}
        # a training stage resumed across sittings: all of them (wall_time_s is the last one's)
        wall = m.get("wall_time_total_s", m.get("wall_time_s"))
        status = rec.get("status")
        if status == "running":  # the report of an interrupted invocation: where the stage stopped
            current = stage_status(state, s)
            status = current["status"] + (f" at epoch {current['epoch']}/{current['max_epochs'] or '?'}"
                                          if current["epoch"] is not None else "")
        stage_table.append({"stage": s, "wall_time_s": wall, "sittings": len(m.get("sittings_s") or [1]) if m else None,
                            "command": rec.get("command"), "status": status,
                            "action": (invocation.get("actions") or {}).get(s, rec.get("last_action")),
                            "hash": rec.get("hash"), "folder": s, "log": rec.get("log"),
                            "runs": rec.get("runs"), "finished_at": rec.get("finished_at")})
    report = {
        "schema": REPORT_SCHEMA,
        "status": outcome.get("status"),
        "stop_reason": outcome.get("stop_reason"),
        "run_dir": str(state.run_dir),
        "dataset": dataset,
        "accuracy_choice": ACCURACY_CHOICE,
        "thresholds": OmegaConf.to_container(cfg.tree.thresholds, resolve=True),
        "decisions": list(outcome.get("decisions") or []),
        "deployment": deployment(outcome),
        "reference": reference,
        "models": rows,
        "pretraining": pretrain,
        "published_points": published,
        "stages": stage_table,
        "total_stage_time_s": sum(t["wall_time_s"] or 0.0 for t in stage_table),
        "failures": list(outcome.get("failures") or []),
        "warnings": list(outcome.get("warnings") or []),
        "invocation": dict(invocation),
        "plots": {},
    }
    report["plots"] = make_plots(state, report)
    return report


def deployment(outcome: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per student: its paths' stages and the deploy rule's decision (scores, margin, branch)."""
    decisions = {d["id"]: d for d in outcome.get("decisions") or []}
    out = []
    for student, info in (outcome.get("students") or {}).items():
        decision = decisions.get(f"deploy:{student}")
        if decision is None:
            continue
        v = decision["values"]
        out.append({"student": student, "paths": dict(info.get("paths") or {}),
                    "scores": v["candidates"], "deployed_path": v["chosen"],
                    "deployed_stage": info.get("deployed"), "branch": v["branch"], "val_size": v["val_size"],
                    "margin": v["margin"], "reason": decision["reason"]})
    return out


def make_plots(state: PipelineState, report: dict[str, Any]) -> dict[str, str]:
    out_dir = state.run_dir / "plots"
    made: dict[str, str] = {}
    curves = {}
    for s in report["stages"]:
        if s["command"] in ("train", "distill", "pretrain") and s["status"] == "done":
            csv_path = state.stage_dir(s["stage"]) / "csv" / "metrics.csv"
            if csv_path.is_file():
                curves[s["stage"]] = plots.read_curves(csv_path)
    path = plots.training_curves(curves, out_dir / "training_curves.png")
    if path:
        made["training_curves"] = str(path.relative_to(state.run_dir))
    for row in report["models"]:
        if row["deployed"]:
            src = state.stage_dir(row["stage"]) / "confusion_matrix.png"
            if src.is_file():
                dst = out_dir / f"confusion_{row['model']}.png"
                atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
                made[f"confusion_{row['model']}"] = str(dst.relative_to(state.run_dir))
    if report["models"]:
        points = [{"label": r["label"], "params": r["params"], "top1": r["test_top1"]} for r in report["models"]]
        made["pareto_params"] = str(plots.pareto_chart(
            points, report["published_points"], "params", "parameters", "Test top-1 vs parameters",
            out_dir / "pareto_params.png").relative_to(state.run_dir))
        lat_points = []
        for r in report["models"]:
            ex = r.get("export") or {}
            for kind in ("fp32", "int8"):
                facts = ex.get(kind) or {}
                if facts.get("latency_p50_ms") is not None:
                    lat_points.append({"label": f"{r['label']} {kind.upper()}", "top1": facts.get("test_top1"),
                                       "latency": facts["latency_p50_ms"],
                                       "marker": "s" if kind == "int8" else "o"})
        if lat_points:
            threads = next((r["export"].get("threads") for r in report["models"] if r.get("export")), None)
            made["pareto_latency"] = str(plots.pareto_chart(
                lat_points, report["published_points"], "latency",
                f"CPU latency, ONNX Runtime, batch 1, median (ms; {threads or 'default'} threads)",
                "Test top-1 (exported model) vs CPU latency", out_dir / "pareto_latency.png",
                log_x=False, published_lines=True).relative_to(state.run_dir))
    return made


# ------------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------------
def _num(x: Any, fmt: str = "{:,}") -> str:
    return "-" if x is None else fmt.format(x)


def _kib(b: Any) -> str:
    return "-" if b is None else f"{b / 1024:.1f} KiB"


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def _flops(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x / 1e9:.3f} G" if x >= 1e8 else f"{x / 1e6:.1f} M"


def markdown(report: Mapping[str, Any]) -> str:
    L = [f"# Pipeline report: {report.get('dataset') or 'no dataset yet'}", "",
         f"- status: **{report['status']}**" + (f" ({report['stop_reason']})" if report.get("stop_reason") else ""),
         f"- run folder: `{report['run_dir']}`",
         "- thresholds (not part of any stage's identity): " + ", ".join(
             f"{k}={v}" for k, v in report["thresholds"].items()), ""]
    if report.get("failures"):
        L += ["## Failures", ""] + [f"- {f}" for f in report["failures"]] + [""]
    if report.get("warnings"):
        L += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    L += ["## Decisions", "", "| decision | question | outcome | reason |", "|---|---|---|---|"]
    for d in report["decisions"]:
        L.append(f"| {d['id']} | {d['question']} | {d['outcome']} | {d['reason']} |")
    L += ["", "Which accuracy decides: " + report["accuracy_choice"], ""]
    if report.get("deployment"):
        L += ["## Deployment", "",
              "Per student: each path's selection score (validation top-1 of the checkpoint its selection "
              "rule handed on; `-`: not run), the deployed path and why.", "",
              "| student | A (standalone) | B (distilled) | C (MaskCLR + distilled) | hold-out | margin | "
              "deployed | decided by | reason |", "|---|---|---|---|---|---|---|---|---|"]
        for d in report["deployment"]:
            cells = [pct(d["scores"][p]["score"]) if p in d["scores"] else "-" for p in PATH_NAMES]
            hold_out = "-" if not d["val_size"] else f"{d['val_size']:,} clips"
            margin = "-" if d["margin"] is None else pts(d["margin"])
            L.append(f"| {d['student']} | {' | '.join(cells)} | {hold_out} | {margin} | "
                     f"{d['deployed_path']} ({d['deployed_stage']}) | {d['branch']} | {d['reason']} |")
        L.append("")
    ref = report.get("reference")
    if ref:
        L += [f"Reference: {ref['label']}: test top-1 {pct(ref['top1'])}"
              + (f", {ref['params']:,} parameters" if ref.get("params") else "")
              + (f" ({ref['source']})" if ref.get("source") else ""), ""]
    if report["models"]:
        L += ["## Models", "",
              "Accuracies from each stage's metrics.json (val: the validation top-1 of the checkpoint "
              "the selection rule handed on; test: that checkpoint on the test split; path A: "
              "trained alone, B: distilled, C: MaskCLR + distilled); exported numbers from the export stage's "
              "report.json (ONNX Runtime on the whole test split; latency: batch 1, median).", "",
              "| model | path | stage | params | FLOPs/clip | val top-1 | test top-1 | deployed | "
              "ONNX FP32 top-1 | INT8 top-1 | INT8 size | FP32 latency | INT8 latency |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["models"]:
            ex = r.get("export") or {}
            f32, i8 = ex.get("fp32") or {}, ex.get("int8") or {}
            L.append(f"| {r['model']} | {r['path']} | [{r['stage']}]({r['metrics_file']}) | "
                     f"{_num(r['params'])} | {_flops(r['flops'])} | {pct(r['val_top1'])} | "
                     f"{pct(r['test_top1'])} | {'yes' if r['deployed'] else ''} | "
                     f"{pct(f32.get('test_top1')) if f32 else '-'} | {pct(i8.get('test_top1')) if i8 else '-'} | "
                     f"{_kib(i8.get('bytes'))} | {_ms(f32.get('latency_p50_ms'))} | "
                     f"{_ms(i8.get('latency_p50_ms'))} |")
        L.append("")
    if report.get("pretraining"):
        L += ["## Path C pretraining (MaskCLR)", "", "| student | stage | best val loss | encoder |",
              "|---|---|---|---|"]
        for p in report["pretraining"]:
            L.append(f"| {p['student']} | {p['stage']} | {_num(p['best_val_loss'], '{:.4f}')} | "
                     f"`{p['encoder']}` |")
        L.append("")
    if report["published_points"]:
        L += ["## Published reference points (not measured here)", "",
              "| model | test top-1 | params | source |", "|---|---|---|---|"]
        for p in report["published_points"]:
            L.append(f"| {p['name']} | {pct(p['top1'])} | {_num(p.get('params'))} | {p.get('source') or ''} |")
        L += ["", "Points without a parameter count are left out of the parameters chart; none "
              "has a latency measured here (dashed lines in the latency chart).", ""]
    if report["plots"]:
        L += ["## Plots", ""] + [f"![{k}]({v})" for k, v in report["plots"].items()] + [""]
    L += ["## Stages", "", "Wall time: each stage's own (its metrics.json: `wall_time_total_s`, the sum "
          "over the sittings of a stage resumed from its last.ckpt, else `wall_time_s`), wherever and "
          "whenever it ran (an adopted stage ran outside the pipeline).", "",
          "| stage | command | status | this run | wall time | sittings | hash | log |",
          "|---|---|---|---|---|---:|---|---|"]
    for s in report["stages"]:
        wall = "-" if s.get("wall_time_s") is None else f"{s['wall_time_s']:,.0f} s"
        L.append(f"| {s['stage']} | {s['command']} | {s['status']} | {s['action']} | {wall} | "
                 f"{s.get('sittings') or '-'} | "
                 f"`{s['hash']}` | {s['log'] or '-'} |")
    total = report.get("total_stage_time_s") or 0.0
    L += ["", f"Summed stage time: {total:,.0f} s ({total / 3600:.2f} h).", ""]
    return "\n".join(L)


def write_report(cfg: DictConfig, state: PipelineState, runner: StageRunner, outcome: Mapping[str, Any],
                 invocation: Mapping[str, Any]) -> dict[str, Any]:
    report = build_report(cfg, state, runner, outcome, invocation)
    atomic_write_json(state.run_dir / "report.json", report)
    atomic_write_text(state.run_dir / "report.md", markdown(report))
    return report
