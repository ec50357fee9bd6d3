"""The decision tree (docs/architecture.md, "The decision tree") as stages and rules.

    Path A  train the teacher (LAST-E v3 base)      -> gate: its validation score above the threshold?
            train the reference (EfficientGCN-B0)   (or take a published accuracy)
            train each student alone (standalone_<student>)
    Path B  distil the teacher into each student    -> rule: Path C for this student?
    Path C  MaskCLR-pretrain the student, distil again from the encoder
    Deploy  per student, A, B or C by the deploy rule -> INT8 ONNX, test-split accuracy

The rules are pure functions of the stages' metrics.json records and the thresholds
(``tree.thresholds``); :class:`Tree` strings the stages together through a
:class:`~last_lite.pipeline.state.StageRunner`. With ``tree.jobs`` > 1 the stages that do not
depend on each other run side by side: the teacher, the reference and the standalone students
(all before the gate, so a gate that stops wastes them), then each student's standalone and
distilled runs, then the Path C pretraining, then its distillation.

Which accuracy decides:

- a run's **selection score** (:func:`selection_score`) is the validation top-1 of the checkpoint
  its selection rule handed on (last_lite/training/selection.py): ``best_val_top1`` under
  ``best_val``, ``selected_val_top1`` under ``last``; it comes from a hold-out of
  ``selection.val_size`` clips, and there is none when that is 0 (``experiment=nw_ucla_full``);
- the teacher gate: the teacher's selection score must be strictly above
  ``teacher_min_val_top1``. Without a hold-out the gate cannot judge: outcome ``unchecked``, which
  proceeds and says so in the report, or stops with ``require_teacher_gate: true``;
- the Path C rule uses **test** top-1 (``top1``): the reference is a test-split number (a
  published accuracy always is, and a trained reference is then compared like with like), and the
  project's plan states its targets (88%, 85%) as test accuracies. The test split only decides
  whether Path C is *tried*, never what is deployed; and C is not tried where the deploy rule
  could never pick it (no usable hold-out, and A or B before C in ``prior_order``);
- the deploy rule (:func:`deploy_decision`), per student, among A (standalone), B (distilled) and
  C (MaskCLR + distilled, when run), by selection score, never by test:

  (a) every candidate scored on the same hold-out of n clips (not the test split): the best
      score wins, but an earlier candidate in ``prior_order`` is displaced only when the best is
      ahead of it by more than ``margin = deploy_z * sqrt(2 p (1 - p) / n)`` (p the candidates' mean
      score): ``sqrt(2 p (1 - p) / n)`` is the standard error of the difference of two
      independent accuracies near p on n clips (an upper bound on the same clips, where the
      errors are positively correlated), so the margin asks for about ``deploy_z`` of them.
      Precisely: the earliest candidate in ``prior_order`` within the margin of the best score is
      deployed, so an earlier one gives way only when it is more than the margin below the best
      (with three candidates the one deployed may be ahead of the one it displaces by less);
  (b) otherwise (no hold-out, a hold-out that is the test split, different hold-outs -- other
      sizes, or other samples by ``selection.val_samples``, a hash of their names -- or a missing
      score) the first candidate in ``prior_order`` is deployed. The default
      ``[B, C, A]`` follows the measured expected-gain tables (conf/tree/default.yaml says which
      numbers), not the design note's expectation (standalone < +KD < +MaskCLR+KD), since with
      a recipe without a hold-out it is what decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from last_lite.pipeline.state import (PipelineState, Stage, StageFailed, StageRunner, export_outputs,
                                      pretrain_outputs, training_outputs)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DIGITS = 6  # accuracies are compared after rounding (float32 metrics: 0.85 is 0.8500000238)

ACCURACY_CHOICE = (
    "Each run's selection score: the validation top-1 of the checkpoint its selection rule handed "
    "on (best_val_top1 under best_val, selected_val_top1 under last). Teacher gate: the teacher's "
    "selection score above the threshold (no hold-out: 'unchecked', which proceeds unless "
    "require_teacher_gate). Student vs reference: test top-1, because the reference accuracy is a "
    "test-split number (a published accuracy always is; a trained reference is then compared like "
    "with like) and the project's plan states its targets (88%, 85%) as test accuracies; it only "
    "decides whether Path C is tried. Deployed path of each student (A standalone, B distilled, C "
    "MaskCLR + distilled): by selection score on the hold-out, a later path in prior_order winning "
    "only by more than deploy_z standard errors; without a usable hold-out, prior_order decides. "
    "Never by test.")


def _r(x: float) -> float:
    return round(float(x), DIGITS)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def pts(x: float) -> str:
    return f"{100 * x:.2f} points"


@dataclass
class Decision:
    id: str
    question: str
    outcome: str          # pass | unchecked | stop | run_c | skip_c | A | B | C
    reason: str
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "outcome": self.outcome,
                "reason": self.reason, "values": self.values}


# ------------------------------------------------------------------------------------------------
# the rules
# ------------------------------------------------------------------------------------------------
def selection_score(metrics: Mapping[str, Any]) -> tuple[float | None, str, int | None]:
    """The validation top-1 of the checkpoint the run's selection rule handed on, the metrics.json
    key it is read from, and the hold-out's size (None when not recorded)."""
    selection = metrics.get("selection") or {}
    # a record without a selection block comes from before the rule: best on validation
    key = "best_val_top1" if selection.get("rule", "best_val") == "best_val" else "selected_val_top1"
    val_size = selection.get("val_size")
    return metrics.get(key), key, None if val_size is None else int(val_size)


def teacher_gate(metrics: Mapping[str, Any], thresholds: Mapping[str, Any]) -> Decision:
    """Path A's gate: the teacher's selection score must be strictly above the threshold; without
    a hold-out ``unchecked`` (proceed), or ``stop`` when ``require_teacher_gate``."""
    threshold = float(thresholds["teacher_min_val_top1"])
    required = bool(thresholds.get("require_teacher_gate", False))
    val, key, val_size = selection_score(metrics)
    values = {"metric": key, "teacher_val_top1": val, "val_size": val_size, "threshold": threshold,
              "require_teacher_gate": required, "val_is_test": bool(metrics.get("val_is_test", False))}
    question = f"Is the teacher's validation top-1 above {pct(threshold)}?"
    if val_size == 0:
        reason = ("the teacher was trained without a validation split (val_size 0), so its accuracy "
                  "cannot be checked before distilling it")
        if required:
            return Decision("gate_A", question, "stop", f"{reason}; require_teacher_gate: stop", values)
        return Decision("gate_A", question, "unchecked",
                        f"{reason}: proceed to Path B unchecked (require_teacher_gate=true stops "
                        f"here instead)", values)
    if val is None:
        return Decision("gate_A", question, "stop",
                        f"the teacher's metrics.json has no validation top-1 ({key}): cannot judge "
                        f"Path A", values)
    note = " (this data's validation split IS its test split)" if values["val_is_test"] else ""
    if _r(val) > _r(threshold):
        return Decision("gate_A", question, "pass",
                        f"teacher validation top-1 {pct(val)} > {pct(threshold)}{note}: proceed "
                        f"to Path B", values)
    return Decision("gate_A", question, "stop",
                    f"teacher validation top-1 {pct(val)} is not above {pct(threshold)}{note}: "
                    f"stop after Path A (improve the teacher before distilling it)", values)


def path_c_decision(student: str, student_top1: float | None, reference: Mapping[str, Any],
                    thresholds: Mapping[str, Any], hold_out: bool = True) -> Decision:
    """The rule, in order: at or above the reference -> skip C; below it by more than
    ``max_gap_to_reference`` -> C; at or below the student's floor -> C; else skip C. A C that the
    deploy rule could never choose is skipped too: without a usable hold-out (``hold_out`` false)
    the first of ``prior_order`` is deployed, so C is run only when it comes before A and B."""
    gap_max = float(thresholds["max_gap_to_reference"])
    floor = (thresholds.get("student_floor") or {}).get(student)
    ref_top1 = reference["top1"]
    ref_name = reference["label"]
    values = {"metric": "top1 (test)", "student_top1": student_top1, "reference_top1": ref_top1,
              "reference": ref_name, "reference_published": bool(reference.get("published")),
              "max_gap_to_reference": gap_max, "student_floor": floor}
    question = f"Does {student} need Path C (MaskCLR pretraining, then distillation again)?"
    if student_top1 is None or ref_top1 is None:
        missing = "the student's" if student_top1 is None else "the reference's"
        raise ValueError(f"{missing} test top-1 is missing (test_after_fit=false?): cannot apply "
                         f"the Path C rule for {student}")
    gap = round(_r(ref_top1) - _r(student_top1), DIGITS)  # 0.88 - 0.85 is 0.030000000000000027
    values["gap"] = gap
    if _r(student_top1) >= _r(ref_top1):
        return Decision(f"path_C:{student}", question, "skip_c",
                        f"test top-1 {pct(student_top1)} is at or above the reference "
                        f"({ref_name}: {pct(ref_top1)}): Path C skipped", values)
    if gap > _r(gap_max):
        return _run_c(student, question, f"test top-1 {pct(student_top1)} is {pts(gap)} below the reference "
                      f"({ref_name}: {pct(ref_top1)}), more than {pts(gap_max)}", values, thresholds, hold_out)
    if floor is not None and _r(student_top1) <= _r(floor):
        return _run_c(student, question, f"test top-1 {pct(student_top1)} is within {pts(gap_max)} of the "
                      f"reference ({ref_name}: {pct(ref_top1)}) but at or below this student's floor {pct(floor)}",
                      values, thresholds, hold_out)
    floor_text = "" if floor is None else f" and above its floor {pct(floor)}"
    return Decision(f"path_C:{student}", question, "skip_c",
                    f"test top-1 {pct(student_top1)} is {pts(gap)} below the reference "
                    f"({ref_name}: {pct(ref_top1)}), within {pts(gap_max)}{floor_text}: Path C skipped", values)


def _run_c(student: str, question: str, why: str, values: dict[str, Any], thresholds: Mapping[str, Any],
           hold_out: bool) -> Decision:
    """Path C called for (``why``): run_c, or skip_c when without a hold-out the prior order puts A
    or B before C, so that the deploy rule could never pick it."""
    prior = _list(thresholds.get("prior_order", DEFAULT_PRIOR_ORDER))
    ahead = [p for p in prior[:prior.index("C")] if p in ("A", "B")] if "C" in prior else []
    values["hold_out"] = hold_out
    if hold_out or not ahead:
        return Decision(f"path_C:{student}", question, "run_c", f"{why}: run Path C", values)
    return Decision(f"path_C:{student}", question, "skip_c",
                    f"{why}, but without a hold-out that ranks the paths prior_order {prior} deploys "
                    f"{ahead[0]} ahead of C, so C could never be deployed: Path C skipped (put C first in "
                    f"tree.thresholds.prior_order to run it)", values)


def usable_hold_out(metrics: Mapping[str, Any]) -> bool:
    """Whether a run was scored on a hold-out the deploy rule can rank paths on (not the test split)."""
    score, _, val_size = selection_score(metrics)
    return bool(val_size) and score is not None and not metrics.get("val_is_test", False)


PATH_NAMES = {"A": "standalone", "B": "distilled", "C": "MaskCLR + distilled"}
DEFAULT_PRIOR_ORDER = ["B", "C", "A"]  # as conf/tree/default.yaml


def deploy_margin(mean_score: float, val_size: int, z: float) -> float:
    """``z`` standard errors of the difference of two accuracies near ``mean_score`` on the same
    ``val_size`` clips."""
    return z * math.sqrt(2 * mean_score * (1 - mean_score) / val_size)


def deploy_decision(student: str, candidates: Mapping[str, Mapping[str, Any]],
                    thresholds: Mapping[str, Any]) -> Decision:
    """The student's path to deploy; ``candidates`` maps a path (A, B, C) to its metrics.json record.
    See the module docstring: (a) the hold-out decides, a later path in ``prior_order`` needing more
    than the margin; (b) without a usable hold-out, ``prior_order`` decides."""
    z = float(thresholds.get("deploy_z", 2.0))
    prior = _list(thresholds.get("prior_order", DEFAULT_PRIOR_ORDER))
    unknown = sorted(set(candidates) - set(prior))
    if unknown:
        raise ValueError(f"tree.thresholds.prior_order {prior} lacks the paths {unknown}")
    order = [p for p in prior if p in candidates]
    scores: dict[str, dict[str, Any]] = {}
    for path in order:
        score, key, val_size = selection_score(candidates[path])
        scores[path] = {"score": score, "metric": key, "val_size": val_size,
                        "val_samples": (candidates[path].get("selection") or {}).get("val_samples"),
                        "val_is_test": bool(candidates[path].get("val_is_test", False))}
    values: dict[str, Any] = {"candidates": scores, "prior_order": prior, "deploy_z": z, "val_size": None,
                              "mean_score": None, "margin": None}
    question = f"Which path of {student} is deployed?"
    listed = ", ".join(f"{p} {pct(c['score'])}" for p, c in scores.items())
    sizes = {c["val_size"] for c in scores.values()}
    hold_outs = {c["val_samples"] for c in scores.values()}  # None: a record from before the hash
    unsplit = [p for p, c in scores.items() if not c["val_size"]]  # 0, or not recorded
    missing = [p for p, c in scores.items() if c["score"] is None]
    if unsplit:
        no_hold_out = "no validation split" + ("" if len(unsplit) == len(scores) else f" for {', '.join(unsplit)}")
    elif missing:
        no_hold_out = f"no validation score for {', '.join(missing)}"
    elif any(c["val_is_test"] for c in scores.values()):
        no_hold_out = "the validation split is the test split"
    elif len(sizes) > 1:
        split_sizes = ", ".join(f"{p} {c['val_size']}" for p, c in scores.items())
        no_hold_out = f"different validation splits ({split_sizes} clips)"
    elif None not in hold_outs and len(hold_outs) > 1:
        no_hold_out = f"different validation splits of {next(iter(sizes))} clips (other samples)"
    else:
        no_hold_out = None
    if no_hold_out is not None:
        chosen = order[0]
        values.update(chosen=chosen, branch="prior_order")
        return Decision(f"deploy:{student}", question, chosen,
                        f"{no_hold_out} ({listed}): {chosen} ({PATH_NAMES[chosen]}) deployed as first "
                        f"of prior_order {prior}", values)
    val_size = sizes.pop()
    mean = sum(c["score"] for c in scores.values()) / len(scores)
    margin = _r(deploy_margin(mean, val_size, z))
    best = max(_r(c["score"]) for c in scores.values())
    chosen = next(p for p, c in scores.items() if round(best - _r(c["score"]), DIGITS) <= margin)
    top = next(p for p, c in scores.items() if _r(c["score"]) == best)
    displaced = order[:order.index(chosen)]
    branch = "hold_out" if chosen == top else "within_margin"
    values.update(chosen=chosen, branch=branch, val_size=val_size, mean_score=mean, margin=margin)
    held = f"validation top-1 on {val_size} clips ({listed}), margin {pts(margin)} (z={z:g})"
    if branch == "within_margin":
        reason = (f"{top} scores best but not by more than the margin over {chosen}, first of "
                  f"prior_order {prior} within it: {held}")
    elif displaced:
        reason = f"{chosen} scores best, ahead of {', '.join(displaced)} by more than the margin: {held}"
    else:
        reason = f"{chosen} scores best and comes first in prior_order {prior}: {held}"
    return Decision(f"deploy:{student}", question, chosen,
                    f"{reason}; {chosen} ({PATH_NAMES[chosen]}) deployed", values)


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------
def _list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, (str, int, float)):
        return [str(x)]
    return [str(v) for v in (OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x)]


def _retarget(overrides: list[str], src: str, dst: str) -> list[str]:
    """``model.x=1`` -> ``++teacher.x=1``: a model's constructor overrides in another command."""
    out = []
    for o in overrides:
        key = o.lstrip("+")
        if key.startswith(src + "."):
            out.append(f"++{dst}.{key[len(src) + 1:]}")
    return out


class Tree:
    """Builds the stages of one pipeline config and walks the decision tree."""

    def __init__(self, cfg: DictConfig, state: PipelineState, runner: StageRunner):
        self.cfg = cfg
        self.p = cfg.tree
        self.state = state
        self.runner = runner
        self.thresholds = OmegaConf.to_container(self.p.thresholds, resolve=True)
        self.jobs = int(self.p.get("jobs") or 1)
        if self.jobs < 1:
            raise ValueError(f"tree.jobs must be 1 or more (stages run side by side), got {self.jobs}")
        self.outcome: dict[str, Any] = {"status": "running", "decisions": [], "stages": [],
                                        "students": {}, "reference": None, "failures": [],
                                        "warnings": []}
        self._check_settings()

    def _check_settings(self) -> None:
        """What would otherwise stop the tree only after hours of training, refused before any."""
        t = self.thresholds
        prior = _list(t.get("prior_order", DEFAULT_PRIOR_ORDER))
        if sorted(prior) != ["A", "B", "C"]:
            raise ValueError(f"tree.thresholds.prior_order must order the paths A, B and C, each once "
                             f"(e.g. [B, C, A]), got {prior}")
        for key in ("deploy_z", "max_gap_to_reference"):
            if t.get(key) is not None and not float(t[key]) >= 0:
                raise ValueError(f"tree.thresholds.{key} must be 0 or more, got {t[key]}")
        unknown = sorted(set(_list(self.p.export.get("baselines"))) - {"teacher", "reference"})
        if unknown:
            raise ValueError(f"tree.export.baselines: unknown stages {unknown} (teacher, reference)")

    def training_stage_names(self) -> set[str]:
        names = {"teacher", "reference"}
        for s in self.p.students:
            names |= {f"standalone_{s}", f"distill_{s}", f"pretrain_{s}", f"distill_{s}_maskclr"}
        return names

    def check_stage_names(self, force: list[str], adopt: Mapping[str, Any]) -> None:
        """``tree.force`` and ``tree.adopt`` name stages of this tree (a typo would redo or retrain
        nothing, silently)."""
        training = self.training_stage_names()
        exports = {f"export_{n}" for n in training if not n.startswith("pretrain_")}
        for key, names, known in (("tree.force", force, training | exports), ("tree.adopt", adopt, training)):
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(f"{key} names no stage of this tree: {unknown}; its stages: "
                                 f"{', '.join(sorted(known))}")

    # -- overrides ----------------------------------------------------------------------------
    def common(self) -> list[str]:
        """Passed to every training stage: the data, the experiment, ``stage_overrides``."""
        out = []
        choices = self.cfg.get("stage_choices") or {}
        if choices.get("data"):
            out.append(f"data={choices['data']}")
        if choices.get("experiment"):
            out.append(f"experiment={choices['experiment']}")
        return out + _list(self.cfg.get("stage_overrides"))

    def teacher_stage(self) -> Stage:
        t = self.p.teacher
        return Stage("teacher", "train", [f"model={t.model}", *self.common(), *_list(t.overrides)],
                     required_outputs=training_outputs)

    def reference_stage(self) -> Stage:
        r = self.p.reference
        return Stage("reference", "train", [f"model={r.model}", *self.common(), *_list(r.overrides)],
                     required_outputs=training_outputs)

    def distill_stage(self, student: str, init_from: str | None = None) -> Stage:
        s = self.p.students[student]
        t = self.p.teacher
        teacher_group = (f"model@teacher={t.model}" if (CONF_DIR / "model" / f"{t.model}.yaml").is_file()
                         else f"teacher.name={t.model}")
        overrides = [teacher_group, f"teacher.ckpt={self.runner.output('teacher', 'checkpoint')}",
                     *_retarget(_list(t.overrides), "model", "teacher"),
                     f"model@student={student}", f"kd={s.distill}", *self.common(), *_list(s.get("overrides"))]
        name, inputs = f"distill_{student}", ["teacher"]
        if init_from is not None:
            overrides.append(f"init_from={init_from}")
            name, inputs = f"distill_{student}_maskclr", ["teacher", f"pretrain_{student}"]
        return Stage(name, "distill", overrides, inputs=inputs, required_outputs=training_outputs)

    def standalone_stage(self, student: str) -> Stage:
        """Path A of a student: trained alone, with its distill stages' ``student.*`` overrides."""
        s = self.p.students[student]
        overrides = [f"model={student}", *_retarget(_list(s.get("overrides")), "student", "model"),
                     *self.common()]
        return Stage(f"standalone_{student}", "train", overrides, required_outputs=training_outputs)

    def pretrain_stage(self, student: str) -> Stage:
        s = self.p.students[student]
        overrides = [f"model={student}", *_retarget(_list(s.get("overrides")), "student", "model"),
                     *self.common(), *_list(self.p.pretrain.overrides)]
        return Stage(f"pretrain_{student}", "pretrain", overrides, required_outputs=pretrain_outputs)

    def export_stage(self, source: str, optional: bool = False) -> Stage:
        e = self.p.export
        name = f"export_{source}"
        overrides = [f"ckpt={self.runner.output(source, 'checkpoint')}", f"backend={e.backend}",
                     f"out_dir={self.state.stage_dir(name)}", *_list(e.overrides)]
        return Stage(name, "export", overrides, inputs=[source], required_outputs=export_outputs,
                     optional=optional)

    # -- walking ------------------------------------------------------------------------------
    def ensure(self, stage: Stage) -> dict:
        if stage.name not in self.outcome["stages"]:
            self.outcome["stages"].append(stage.name)
        return self.runner.ensure(stage)

    def decide(self, decision: Decision) -> Decision:
        self.outcome["decisions"].append(decision.as_dict())
        return decision

    def published_reference(self) -> bool:
        published = self.p.reference.get("published")
        return published is not None and published.get("top1") is not None

    def reference(self) -> dict[str, Any]:
        r = self.p.reference
        published = r.get("published")
        label = str(r.get("name") or r.model)
        if self.published_reference():
            pub = OmegaConf.to_container(published, resolve=True)
            dataset = pub.get("dataset")
            seen = self.state.metrics("teacher").get("dataset")
            if dataset and seen and dataset != seen:
                raise ValueError(f"the published reference accuracy is for {dataset!r} but the "
                                 f"stages run on {seen!r}: pick the matching tree preset (tree=ntu60_xsub ...)")
            return {"label": f"{label}, published", "name": label, "model": str(r.model),
                    "top1": float(pub["top1"]), "params": pub.get("params"), "published": True,
                    "source": pub.get("source"), "dataset": dataset, "stage": None}
        self.ensure(self.reference_stage())
        m = self.state.metrics("reference")
        return {"label": f"{label}, trained here", "name": label, "model": str(r.model),
                "top1": m.get("top1"), "params": m.get("params"), "published": False,
                "source": "trained with the same recipe on the same data (Path A)",
                "dataset": m.get("dataset"), "stage": "reference"}

    def ensure_all(self, stages: list[Stage]) -> None:
        """Independent stages, ``tree.jobs`` at a time (in order when 1)."""
        for stage in stages:
            if stage.name not in self.outcome["stages"]:
                self.outcome["stages"].append(stage.name)
        self.runner.ensure_all(stages, self.jobs)

    def run(self) -> dict[str, Any]:
        """Walk the tree; ``self.outcome`` is filled as it goes (also when a stage fails)."""
        students = list(self.p.students)
        if self.jobs > 1:  # Path A's stages do not depend on each other: side by side, before the gate
            reference = [] if self.published_reference() else [self.reference_stage()]
            self.ensure_all([self.teacher_stage(), *reference,
                             *(self.standalone_stage(s) for s in students)])
        self.ensure(self.teacher_stage())
        gate = self.decide(teacher_gate(self.state.metrics("teacher"), self.thresholds))
        if gate.outcome == "unchecked":
            self.outcome["warnings"].append(f"teacher gate unchecked: {gate.reason}")
        elif gate.outcome != "pass":
            self.outcome["status"] = "stopped"
            self.outcome["stop_reason"] = gate.reason
            return self.outcome
        reference = self.reference()
        self.outcome["reference"] = reference
        infos: dict[str, dict[str, Any]] = {}
        for student in students:
            infos[student] = self.outcome["students"][student] = {"paths": {}}
        a = {s: self.standalone_stage(s) for s in students}
        b = {s: self.distill_stage(s) for s in students}
        self.ensure_all([stage for s in students for stage in (a[s], b[s])])
        candidates: dict[str, dict[str, Mapping[str, Any]]] = {}
        for student in students:
            infos[student]["paths"].update(A=a[student].name, B=b[student].name)
            standalone, distilled = self.state.metrics(a[student].name), self.state.metrics(b[student].name)
            # C can be deployed past A or B only where the hold-out ranks them all
            hold_out = usable_hold_out(standalone) and usable_hold_out(distilled)
            decision = self.decide(path_c_decision(student, distilled.get("top1"), reference, self.thresholds,
                                                   hold_out=hold_out))
            infos[student]["path_c"] = decision.outcome
            candidates[student] = {"A": standalone, "B": distilled}
        path_c = [s for s in students if infos[s]["path_c"] == "run_c"]
        pretrain = {s: self.pretrain_stage(s) for s in path_c}
        self.ensure_all(list(pretrain.values()))
        c = {s: self.distill_stage(s, init_from=str(self.runner.output(pretrain[s].name, "encoder")))
             for s in path_c}
        self.ensure_all(list(c.values()))
        for student in students:
            info = infos[student]
            if student in c:
                info["paths"].update(C_pretrain=pretrain[student].name, C=c[student].name)
                candidates[student]["C"] = self.state.metrics(c[student].name)
            deploy = self.decide(deploy_decision(student, candidates[student], self.thresholds))
            info["deployed_path"] = deploy.outcome
            info["deployed"] = info["paths"][deploy.outcome]
            export = self.export_stage(info["deployed"])
            self.ensure(export)
            info["export"] = export.name
        for baseline in _list(self.p.export.get("baselines")):
            if baseline == "reference" and not reference.get("stage"):
                continue
            stage = self.export_stage(baseline, optional=True)
            try:
                self.ensure(stage)
            except StageFailed as exc:
                self.outcome["warnings"].append(
                    f"optional export of the {baseline} failed (exit code {exc.returncode}; log "
                    f"{exc.log_path}); its latency is left out of the charts")
        self.outcome["status"] = "complete"
        return self.outcome
