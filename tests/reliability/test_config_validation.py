"""Config values are checked once, before any work, for every command (issue 19 point 8), and a
misspelt override key gets "did you mean" (issue 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from reliability_support import REPO, env_for_subprocess

from last_lite.config_checks import (ConfigError, computed_differences, did_you_mean, override_hints,
                                     validate_run_config)

CONF = REPO / "conf"
COMMANDS = ["train", "distill", "pretrain", "probe", "evaluate", "export", "prepare", "pipeline"]


def _compose(name: str, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_shipped_config_passes_the_validation(command):
    required = {"evaluate": ["ckpt=x"], "export": ["ckpt=x"], "prepare": ["raw_dir=x", "out_dir=y"],
                "probe": ["encoder=x"]}.get(command, [])
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose(command, required)
    HydraConfig.instance().set_config(cfg)
    validate_run_config(cfg, command)
    if command == "train":
        for experiment in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
            cfg = _compose("train", [f"experiment={experiment}"])
            HydraConfig.instance().set_config(cfg)
            validate_run_config(cfg, command)


@pytest.mark.parametrize("override,message", [
    ("optim.lr=abc", "optim.lr must be a positive finite number, got 'abc'"),
    ("data.clip_len=0", "data.clip_len must be a positive integer, got 0"),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
    ("trainer.max_epochs=-1", "trainer.max_epochs must be a positive integer"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be a positive integer"),
    ("data.max_persons=0", "data.max_persons must be null or a positive integer, got 0"),
    ("data.val_split=sometimes", "data.val_split must be one of"),
])
def test_bad_values_are_refused_with_the_key_what_it_must_be_and_what_it_got(override, message):
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose("train", [override])
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_run_config(cfg, "train")


@pytest.mark.parametrize("command,override", [
    ("train", "data.clip_len=0"), ("train", "trainer.max_epochs=0"), ("distill", "optim.lr=abc"),
    ("pretrain", "data.batch_size=0"), ("evaluate", "data.max_persons=0"),
    ("probe", "data.batch_size=0"), ("export", "parity.samples=0"), ("prepare", "chunk_size=0"),
    ("pipeline", "data.clip_len=0"),
])
def test_every_command_stops_before_its_run_folder_or_cache_exists(tmp_path, command, override):
    required = {"evaluate": ["ckpt=x.ckpt"], "export": ["ckpt=x.ckpt"], "probe": ["encoder=x"],
                "prepare": [f"raw_dir={tmp_path}", f"out_dir={tmp_path / 'store'}"],
                "pipeline": ["data=synthetic"]}.get(command, [])
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", f"last_lite.{command}", override, *required,
                           f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"
                           if command not in ("export", "prepare", "pipeline") else f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env_for_subprocess(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "invalid config" in proc.stderr and override.split("=")[0] in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists() and not (tmp_path / "cache").exists() and not (tmp_path / "store").exists()
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == []


def test_a_misspelt_override_key_gets_did_you_mean(tmp_path):
    assert "data.clip_len" in did_you_mean("data.clip_lenn", ["data.clip_len", "data.batch_size"])
    hints = override_hints("train", ["data.clip_lenn=3", "trainer.max_epoch=2", "optim.lr=0.1",
                                     "hydra.run.dir=x", "modle=last_lite_nano"])
    assert any("data.clip_len?" in h or "data.clip_len," in h for h in hints)
    assert any("trainer.max_epochs" in h for h in hints)
    assert any("model" in h for h in hints if h.startswith("hint: modle"))
    assert not any("optim.lr " in h or "hydra" in h for h in hints)
    # a preset (a _global_ package) and a group under another package are choices, not unknown keys
    assert override_hints("train", ["experiment=nw_ucla_full", "model=last_lite_nano"]) == []
    assert override_hints("distill", ["model@teacher=last_e_v3_base", "kd=nano"]) == []
    proc = subprocess.run([sys.executable, "-m", "last_lite.train", "data.clip_lenn=3",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env_for_subprocess(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "did you mean: data.clip_len" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_resuming_a_run_compares_what_it_computes_and_auto_precision_agrees_with_any():
    saved = {"trainer": {"precision": "32-true"}, "optim": {"lr": 0.1}, "threads": 1,
             "logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger"}}}
    assert computed_differences(saved, {"trainer": {"precision": "auto"}, "optim": {"lr": 0.1}, "threads": 2,
                                        "logger": {"csv": {"_target_": "ResumableCSVLogger"}}}) == []
    assert computed_differences(saved, {"trainer": {"precision": "bf16-mixed"}, "optim": {"lr": 0.01}}) == [
        "optim.lr: 0.1 vs now 0.01", "trainer.precision: '32-true' vs now 'bf16-mixed'"]
