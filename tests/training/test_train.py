"""Path A through its real Hydra entry: training, resume, optimiser groups, evaluation, NaN guard."""

import csv
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA, read_metrics, run_command
from last_lite.models import create_model
from last_lite.training.base import weight_decay_groups
from last_lite.training.checkpoints import load_checkpoint
from last_lite.training.supervised import SupervisedModule


def _epoch_losses(run_dir: Path) -> dict[int, float]:
    losses: dict[int, list[float]] = {}
    with open(run_dir / "csv" / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                losses.setdefault(int(row["epoch"]), []).append(float(row["train/loss"]))
    return {e: sum(v) / len(v) for e, v in losses.items()}


def test_two_epoch_run_through_hydra_lowers_the_loss_and_writes_its_record(tmp_path):
    run_command("train", ["model=last_lite_nano", "trainer.max_epochs=3", "optim.lr=0.05", *TINY_DATA],
                tmp_path)
    losses = _epoch_losses(tmp_path)
    assert losses[2] < losses[0]
    metrics = read_metrics(tmp_path)
    assert metrics["schema"] == "last_lite.metrics/1" and metrics["command"] == "train"
    assert metrics["model"] == "last_lite_nano" and metrics["dataset"] == "synthetic"
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert len(metrics["per_class_accuracy"]) == 16 and metrics["epochs"] == 3
    assert metrics["params"] == sum(p.numel() for p in create_model("last_lite_nano", num_classes=16).parameters())
    assert len(metrics["data_index_sha256"]) == 64 and metrics["versions"]["torch"]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").is_file()
    # a 64-clip hold-out is too small to rank epochs: selection=auto hands on the last (EMA) weights
    assert metrics["selection"]["rule"] == "last" and Path(metrics["checkpoint"]).name == "last.ckpt"


def test_resume_from_a_mid_run_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    common = ["model=last_lite_nano", "trainer.max_epochs=3", "test_after_fit=false",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='e{epoch}'",
              "callbacks.model_checkpoint.monitor=null", *TINY_DATA]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_command("train", common, full)
    mid = full / "checkpoints" / "e0.ckpt"
    assert mid.is_file()
    run_command("train", [*common, f"ckpt_path={mid}"], resumed)
    final_full = load_checkpoint(full / "checkpoints" / "last.ckpt")["state_dict"]
    final_resumed = load_checkpoint(resumed / "checkpoints" / "last.ckpt")["state_dict"]
    assert final_full.keys() == final_resumed.keys()
    for key, value in final_full.items():
        assert torch.equal(value, final_resumed[key]), key
    # the whole cost of a split run: the first sitting's fit time (to its checkpoint), then the second's
    first_sitting = load_checkpoint(mid)["sittings_s"]
    assert len(first_sitting) == 1 and first_sitting[0] > 0
    full_record, resumed_record = read_metrics(full), read_metrics(resumed)
    assert len(full_record["sittings_s"]) == 1
    earlier, this = resumed_record["sittings_s"]
    assert earlier == round(first_sitting[0], 2) and this == resumed_record["wall_time_s"]
    assert resumed_record["wall_time_total_s"] == pytest.approx(first_sitting[0] + resumed_record["wall_time_s"], abs=0.01)


def test_rerunning_with_ckpt_path_last_resumes_skips_a_finished_run_and_refuses_another_config(tmp_path):
    common = ["model=last_lite_nano", "trainer.max_epochs=3", "test_after_fit=false", "ckpt_path=last",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='e{epoch}'",
              "callbacks.model_checkpoint.monitor=null", *TINY_DATA]
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    first = run_command("train", common, run_dir)  # nothing there yet: from the beginning
    assert "starting from the beginning" in first.stderr + first.stdout
    uninterrupted = load_checkpoint(checkpoints / "last.ckpt")["state_dict"]
    curves = (run_dir / "csv" / "metrics.csv").read_text()
    # cut off after its first epoch: last.ckpt is that epoch's, no metrics.json
    shutil.copy(checkpoints / "e0.ckpt", checkpoints / "last.ckpt")
    (run_dir / "metrics.json").unlink()
    second = run_command("train", common, run_dir)
    assert f"resuming from {checkpoints / 'last.ckpt'}" in second.stderr + second.stdout
    resumed = load_checkpoint(checkpoints / "last.ckpt")["state_dict"]
    assert all(torch.equal(value, resumed[key]) for key, value in uninterrupted.items())
    record = (run_dir / "metrics.json").read_bytes()
    assert len(read_metrics(run_dir)["sittings_s"]) == 2
    # the curves stay whole: the first sitting's rows kept, the epochs after its checkpoint logged once
    assert (run_dir / "csv" / "metrics.csv").read_text() == curves

    third = run_command("train", common, run_dir)  # finished: nothing is retrained or rewritten
    assert "has finished" in third.stderr + third.stdout and (run_dir / "metrics.json").read_bytes() == record

    other = run_command("train", [*common, "optim.lr=0.01"], run_dir, check=False)
    assert other.returncode != 0 and "holds a run of another config (optim.lr: 0.1 vs now 0.01)" in other.stderr
    assert (run_dir / "metrics.json").read_bytes() == record

    (run_dir / "metrics.json").write_text('{"top1": 0.')  # damaged: moved aside, the last step redone
    fourth = run_command("train", common, run_dir)
    assert "is damaged" in fourth.stderr + fourth.stdout
    assert [p.read_text() for p in run_dir.glob("metrics.json.damaged-*")] == ['{"top1": 0.']
    assert read_metrics(run_dir)["epochs"] == 3 and torch.equal(
        load_checkpoint(checkpoints / "last.ckpt")["state_dict"]["model.classifier.weight"],
        uninterrupted["model.classifier.weight"])

    (run_dir / "metrics.json").unlink()  # a damaged checkpoint is named before Lightning reads it
    (checkpoints / "last.ckpt").write_bytes((checkpoints / "e0.ckpt").read_bytes()[:1000])
    fifth = run_command("train", common, run_dir, check=False)
    assert fifth.returncode != 0 and f"ckpt_path=last: a checkpoint in {run_dir} cannot be read" in fifth.stderr


def test_weight_decay_skips_biases_norms_gate_alphas_edges_and_the_pooling_gate():
    model = create_model("last_e_v3_base", num_classes=10)
    decay, no_decay = weight_decay_groups(model, 4e-4)
    assert decay["weight_decay"] == 4e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decayed | skipped == set(names.values()) and not decayed & skipped
    for name in skipped:
        assert (name.endswith((".bias", "alpha", "edge_weight", "pool.gate"))
                or ".bn" in name or "norm" in name or name.split(".")[-2].isdigit()), name
    assert "pool.gate" in skipped and any(n.endswith("edge_weight") for n in skipped)
    assert any(n.endswith("gate.alpha") for n in skipped) and any(n.endswith("att.alpha") for n in skipped)
    assert all(n.endswith("weight") and not n.endswith("edge_weight") for n in decayed)
    assert "classifier.weight" in decayed and "classifier.bias" in skipped


def test_a_class_without_test_samples_has_no_per_class_accuracy():
    """torchmetrics reports 0 for such a class; there is no accuracy to report: None (metrics.json null)."""
    module = SupervisedModule({"name": "last_lite_nano", "num_classes": 3})
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])  # the last one wrongly class 2
    labels = torch.tensor([0, 1, 1])
    module.test_per_class.update(logits, labels)
    module.test_confusion.update(logits, labels)
    results = module.test_results()
    assert results["per_class_accuracy"] == [1.0, 0.5, None]
    assert results["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_evaluate_writes_metrics_and_confusion_matrix(tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run_command("train", ["model=last_lite_nano", "trainer.max_epochs=1", *TINY_DATA], train_dir)
    ckpt = read_metrics(train_dir)["checkpoint"]
    tiny = [o for o in TINY_DATA if o.startswith("data.")]
    run_command("evaluate", [f"ckpt={ckpt}", "threads=1", *tiny], eval_dir)  # same key as train's
    metrics = read_metrics(eval_dir)
    assert metrics["command"] == "evaluate"
    # The same checkpoint on the same clips gives the training run's test accuracy.
    assert metrics["top1"] == pytest.approx(read_metrics(train_dir)["top1"])
    assert (eval_dir / "confusion_matrix.png").is_file() and (eval_dir / "confusion_matrix.json").is_file()
    run_command("evaluate", [f"ckpt={ckpt}", "test_clips=3", *tiny], eval_dir)
    assert read_metrics(eval_dir)["test_clips"] == 3


def test_unknown_config_key_fails_before_any_work(tmp_path):
    result = run_command("train", ["trainer.max_epocs=2"], tmp_path, check=False)
    assert result.returncode != 0 and "max_epocs" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_compiled_features_train_the_same_function_and_keep_the_checkpoint_names(monkeypatch):
    import torch._inductor.config

    from last_lite.training.supervised import SupervisedModule

    spec = {"name": "last_lite_nano", "num_classes": 4, "layout": "ntu25"}
    torch.manual_seed(0)
    eager = SupervisedModule(spec)
    torch.manual_seed(0)
    compiled = SupervisedModule(spec, compile_features=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x, y = torch.randn(4, 3, 16, 25, 1), torch.tensor([0, 1, 2, 3])
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # DropPath: eager's RNG
    for module in (eager, compiled):
        module.train()
        torch.manual_seed(1)
        module.loss, _ = module.model_step((x, y))
        module.loss.backward()
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert compiled._compiled_features is not None and eager._compiled_features is None
