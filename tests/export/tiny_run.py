"""The briefly trained synthetic model both export test files start from."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def one_thread_env() -> dict:
    """The environment of an export or runtime subprocess: this tree importable, one thread
    (spinning OpenMP threads crawl on a busy machine)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def train_tiny(base: Path, synth: dict, clip: int, epochs: int) -> dict:
    """last_lite_nano trained for a few short epochs on a small synthetic set through the real
    train entry (in-process, one thread); its record, checkpoint and folders."""
    import torch
    from hydra import compose, initialize_config_dir

    from last_lite.train import run

    out = base / "run"
    overrides = [
        "model=last_lite_nano", f"trainer.max_epochs={epochs}", "+trainer.enable_progress_bar=false",
        "callbacks.rich_progress_bar=null", "callbacks.learning_rate_monitor=null",
        "sched.warmup_epochs=0", "optim.lr=0.1", f"paths.root_dir={ROOT}",
        f"paths.output_dir={out}", f"paths.cache_dir={base / 'cache'}",
        f"data.clip_len={clip}", "data.batch_size=8",
        *[f"data.source.{k}={v}" for k, v in synth.items()],
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = run(cfg)
    finally:
        torch.set_num_threads(threads)
    return {"ckpt": Path(record["checkpoint"]), "run_dir": out, "record": record,
            "cache": base / "cache"}
