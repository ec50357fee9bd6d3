"""Issue 20's errors and noise: each check is small (no training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from last_lite.training.records import metrics_record


def test_a_class_without_test_samples_is_recorded_as_none():
    record = metrics_record(command="export", model="m", dataset="d", top1=0.5, top5=1.0,
                            per_class_accuracy=[1.0, None], class_names=["a", "b"], params=1,
                            epochs=None, seed=None, wall_time_s=0.0, data_index_sha256=None)
    assert record["per_class_accuracy"] == {"a": 1.0, "b": None}


def test_summarize_on_a_missing_folder_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "last_lite.summarize", str(tmp_path / "nope")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_data_folder_stops_before_the_run_folder_and_names_last_lite_data(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "last_lite.train", "data=nw_ucla", f"hydra.run.dir={run_dir}"],
                            cwd=REPO, capture_output=True, text=True,
                            env={"PATH": "", "LAST_LITE_DATA": str(tmp_path / "nodata")})
    assert result.returncode == 1 and "LAST_LITE_DATA" in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_a_teacher_of_another_model_names_the_model_and_the_choice():
    from last_lite.training.distillation import load_frozen_teacher

    spec = {"name": "last_lite_small", "num_classes": 10, "layout": "ucla20", "in_channels": 3}
    with pytest.raises(ValueError, match="model@teacher=last_e_v3_base"):
        load_frozen_teacher(spec, str(REPO / "zoo/nw_ucla/last_e_v3_base.safetensors"))


def test_probe_takes_threads():
    assert "threads:" in (REPO / "conf" / "probe.yaml").read_text()
    assert "apply_thread_count(cfg)" in Path(REPO / "last_lite/training/path_c/probe.py").read_text()
