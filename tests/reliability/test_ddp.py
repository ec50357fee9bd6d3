"""Distributed training through Lightning: ``trainer=ddp_cpu`` (gloo, two processes) end to end,
and the data cache built once when all ranks start together (torchrun, srun)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest
from omegaconf import OmegaConf

from reliability_support import HERE, REPO, env_for_subprocess

# An odd test split (11 classes x 3 = 33 samples) and an evaluation batch of 5: the two ranks
# get 17 and 16 test samples, and 2 and 1 validation batches. A padding DistributedSampler would
# evaluate 34 test samples; an unpadded one 33 with uneven batch counts (which must not hang).
DDP_DATA = ["data.source.num_classes=11", "data.source.train_per_class=8", "data.source.test_per_class=3",
            "data.clip_len=32"]


def _run(module: str, overrides: list[str], run_dir, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"last_lite.{module}", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def test_two_process_ddp_cpu_run_matches_a_single_process_evaluation(tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    result = _run("train", ["trainer=ddp_cpu", "model=last_lite_nano", "trainer.max_epochs=1",
                            "data.batch_size=16", "+data.eval_batch_size=5", "sched.warmup_epochs=0",
                            *DDP_DATA], train_dir)
    out = result.stdout + result.stderr
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    # Only global rank zero records: one summary, one metrics.json, no stray temp files.
    assert result.stdout.count("outputs: ") == 1, result.stdout
    assert "it is recommended to use `Trainer(devices=1" not in out  # no padded test sampler
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert sorted(p.name for p in train_dir.iterdir() if p.name.startswith(".") and p.name != ".hydra") == []
    assert sorted(p.name for p in (train_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    confusion = np.asarray(metrics["confusion_matrix"])
    assert confusion.sum() == 33  # the test split exactly once across both ranks

    _run("evaluate", [f"ckpt={metrics['checkpoint']}", "+data.eval_batch_size=5", *DDP_DATA], eval_dir)
    single = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["top1"] == single["top1"] and metrics["top5"] == single["top5"]
    assert metrics["per_class_accuracy"] == single["per_class_accuracy"]
    matrix = json.loads((eval_dir / "confusion_matrix.json").read_text())["matrix"]
    assert confusion.tolist() == matrix


def test_two_process_ddp_cpu_pretraining_and_distillation_without_mimicry_train_past_step_one(tmp_path):
    """DDP (find_unused_parameters=False) stops at the second step when a parameter that requires
    grad got none: MaskCLR's unused head and distillation's projections at kd.gamma=0 are frozen."""
    import torch

    from last_lite.models import create_model

    steps = ["trainer=ddp_cpu", "trainer.max_epochs=1", "+trainer.max_steps=2", "data.batch_size=8",
             "sched.warmup_epochs=0", *DDP_DATA]
    _run("pretrain", [*steps, "model=last_lite_nano", "data.max_persons=1", "bn_recalibration_batches=1"],
         tmp_path / "pretrain")
    metrics = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
    assert metrics["params"] == sum(p.numel() for p in create_model("last_lite_nano", num_classes=11).parameters())
    assert (tmp_path / "pretrain" / "encoder.safetensors").is_file()

    spec = {"name": "last_e_v3_nano", "num_classes": 11, "layout": "ntu25", "in_channels": 3}
    teacher = tmp_path / "teacher.ckpt"  # untrained: only the step count matters here
    torch.save({"state_dict": {f"model.{k}": v for k, v in create_model(**spec).state_dict().items()},
                "hyper_parameters": {"model_spec": spec}}, teacher)
    _run("distill", [*steps, f"teacher.ckpt={teacher}", "model@teacher=last_e_v3_nano", "teacher.precision=32",
                     "model@student=last_lite_nano", "kd=nano", "kd.gamma=0", "test_after_fit=false"],
         tmp_path / "distill")
    assert json.loads((tmp_path / "distill" / "metrics.json").read_text())["epochs"] == 1


# One process sees a NaN loss at its second step, the other does not.
NAN_ON_ONE_RANK = """
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from last_lite.training.supervised import SupervisedModule


class NaNOnRankOne(SupervisedModule):
    def model_step(self, batch):
        loss, terms = super().model_step(batch)
        return (loss * float("nan") if self.global_rank == 1 and self.global_step == 1 else loss), terms


if __name__ == "__main__":
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 16, 25, 1), torch.arange(32) % 4)
    module = NaNOnRankOne({"name": "last_lite_nano", "num_classes": 4}, sched={"name": "none"})
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=4))
    # the NaN step's gradients were dropped, not applied
    assert trainer.global_step == 3 and all(torch.isfinite(p).all() for p in module.parameters())
    print("rank", trainer.global_rank, "done")
"""


def test_a_non_finite_loss_on_one_process_skips_the_step_on_every_process(tmp_path):
    """A process that skipped its backward alone would leave the other waiting in the gradient
    all-reduce (a hang, or gloo's error): the skip is decided across processes."""
    script = tmp_path / "nan_on_one_rank.py"
    script.write_text(NAN_ON_ONE_RANK)
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env_for_subprocess(),
                            capture_output=True, text=True, timeout=180)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "non-finite training loss (nan) at step 1" in out
    assert "non-finite training loss (on another process) at step 1" in out
    assert "rank 0 done" in out and "rank 1 done" in out


def test_ranks_started_together_build_the_data_cache_once(tmp_path):
    """Under torchrun or srun every rank calls the source's build() at once; one must write the
    store and the others wait for it (a file lock), not all write and rename over each other."""
    cache, log = tmp_path / "cache", tmp_path / "writes.log"
    cmd = [sys.executable, str(HERE / "reliability_support.py"), "build", str(cache), str(log)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env_for_subprocess(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    deadline = time.monotonic() + 120
    outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0 and "ok 4" in stdout, stderr[-3000:]
    assert len(log.read_text().splitlines()) == 1, log.read_text()
    assert len(list(cache.iterdir())) == 1  # one store; no temp folder, no lock file left


def test_the_submitit_slurm_launcher_config_matches_the_plugin():
    """conf/hydra/launcher/submitit_slurm.yaml (optional: hydra-submitit-launcher) lists exactly the
    plugin's fields; skipped where the plugin is not installed."""
    ours = OmegaConf.load(REPO / "conf" / "hydra" / "launcher" / "submitit_slurm.yaml")
    assert ours._target_.endswith("submitit_launcher.SlurmLauncher")
    config = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")
    assert set(ours.keys()) == {f.name for f in fields(config.SlurmQueueConf)}
