"""docs/own_data.md, followed as written: its commands run on a small generated folder.

Only what makes the run short is added (one epoch, 16-frame clips, 16 calibration clips); the
folder stands in for ``/path/to/my_clips`` and the commands run in a temporary working folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from own_data import CLASSES, make_clips

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own_data.md"
SHORT = {"last_lite.train": ["trainer.max_epochs=1", "data.clip_len=16", "threads=1"],
         "last_lite.evaluate": ["threads=1"], "last_lite.export": ["backend.calibration.samples=16"]}


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), flags=re.S)


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_the_own_data_page_runs_as_written(tmp_path):
    folder = make_clips(tmp_path / "my_clips")
    work = tmp_path / "work"
    work.mkdir()
    commands = [line for block in blocks("bash") for line in block.splitlines()
                if line.startswith("python -m last_lite.")]
    assert [c.split()[2] for c in commands] == ["last_lite.train", "last_lite.evaluate",
                                                "last_lite.export", "last_lite.runtime", "last_lite.zoo"]
    outputs = {}
    for command in commands:
        args = shlex.split(command.replace("/path/to/my_clips", str(folder)))
        module = args[2]
        outputs[module] = run([sys.executable, *args[1:], *SHORT.get(module, [])], work)
    trained = json.loads((work / "runs/my_model/metrics.json").read_text())
    evaluated = json.loads((work / "runs/my_model_eval/metrics.json").read_text())
    # evaluate, given only the checkpoint, sees the test clips as the test after training did
    assert trained["top1"] is not None
    assert evaluated["per_class_accuracy"].keys() == set(CLASSES)
    assert "data: as trained (the checkpoint)" in outputs["last_lite.evaluate"]
    # the class names of classes.txt reach the ONNX file and the runtime's output
    assert re.search(r"whole recording \(20 frames\): (wave|clap|point) ", outputs["last_lite.runtime"])
    exported = json.loads((work / "runs/my_model/export/onnx_int8/metrics.json").read_text())
    assert set(exported["per_class_accuracy"]) == set(CLASSES)
    # the zoo command (run above) and snippet, then evaluate on the zoo file with no other argument
    (python,) = blocks("python")
    printed = run([sys.executable, "-c", python], work)
    assert "wave" in printed
    run([sys.executable, "-m", "last_lite.evaluate", "ckpt=runs/my_zoo/my_clips/last_lite_small.safetensors",
         "hydra.run.dir=runs/zoo_eval", "threads=1"], work)
    zoo_eval = json.loads((work / "runs/zoo_eval/metrics.json").read_text())
    assert zoo_eval["top1"] == evaluated["top1"]
