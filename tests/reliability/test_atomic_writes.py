"""Every file a command leaves behind is written under a temporary name and renamed into place, so a
kill never leaves a truncated file where a good one was expected: checkpoints (AtomicCheckpointIO),
stores (StoreWriter), exports and reports (last_lite.io.atomic_write)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from reliability_support import REPO, env_for_subprocess

from last_lite.data.store import SkeletonStore, StoreWriter, open_store_if_valid
from last_lite.training.checkpoints import AtomicCheckpointIO, load_checkpoint
from last_lite.training.runner import build_callbacks, build_trainer, chosen_checkpoint


# ------------------------------------------------------------------------------------------------
# checkpoints

def _other_filesystem_tmp(near: Path) -> Path | None:
    """A temp folder on another filesystem than ``near`` (/dev/shm is tmpfs), or None."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != near.stat().st_dev:
        return Path(tempfile.mkdtemp(dir=shm))
    return None


def test_lightning_save_copies_across_filesystems_ours_renames_beside_the_file(tmp_path, monkeypatch):
    """Lightning's ``_atomic_save`` writes into the system temp folder and ``shutil.move``s the
    file: across filesystems that is a copy into the final path (a kill mid-copy truncates it).
    AtomicCheckpointIO writes beside the target and renames, whatever TMPDIR is."""
    other = _other_filesystem_tmp(tmp_path)
    if other is None:
        pytest.skip("no second filesystem (/dev/shm) to put TMPDIR on")
    copies, renames = [], []
    real_copy, real_replace = shutil.copyfile, os.replace
    monkeypatch.setattr(shutil, "copyfile", lambda s, d, **kw: copies.append(str(d)) or real_copy(s, d, **kw))
    monkeypatch.setattr(os, "replace", lambda s, d: renames.append((str(s), str(d))) or real_replace(s, d))
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    state = {"state_dict": {"w": torch.arange(10.0)}}
    try:
        theirs, ours = tmp_path / "lightning.ckpt", tmp_path / "ours.ckpt"
        TorchCheckpointIO().save_checkpoint(state, theirs)
        assert copies == [str(theirs)]  # copied into place: not atomic
        copies.clear()
        AtomicCheckpointIO().save_checkpoint(state, ours)
        assert copies == [] and len(renames) == 1
        src, dst = renames[0]
        assert dst == str(ours) and Path(src).parent == tmp_path  # renamed within the folder
        assert torch.equal(load_checkpoint(ours)["state_dict"]["w"], state["state_dict"]["w"])
        assert (ours.stat().st_mode & 0o777) == (theirs.stat().st_mode & 0o777)  # same permissions
    finally:
        shutil.rmtree(other, ignore_errors=True)


class _FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_a_failed_checkpoint_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    big = {"state_dict": {"w": torch.zeros(1 << 20)}, "later": _FailsToPickle()}
    with pytest.raises(RuntimeError, match="simulated"):
        io.save_checkpoint(big, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


_SAVE_LOOP = """
import sys, torch
from last_lite.training.checkpoints import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
for epoch in range(10_000):
    io.save_checkpoint({"epoch": epoch, "w": torch.full((4 << 20,), float(epoch))}, path)
    print(epoch, flush=True)
"""


def test_sigkill_during_checkpoint_writes_never_leaves_a_truncated_checkpoint(tmp_path):
    """A process rewriting a 16 MB checkpoint in a loop is killed at an arbitrary moment: the
    checkpoint path always holds a whole file (only a hidden temp file may be left beside it)."""
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path)], cwd=REPO,
                            env=env_for_subprocess(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"  # one whole checkpoint exists
        time.sleep(0.37)  # somewhere inside a later write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["w"], torch.full((4 << 20,), float(ckpt["epoch"])))
    assert all(p.name == "last.ckpt" or (p.name.startswith(".last.ckpt.") and p.name.endswith(".tmp"))
               for p in tmp_path.iterdir())


def _callbacks_cfg(dirpath: Path, every_n_train_steps: int = 0) -> OmegaConf:
    cfg = OmegaConf.load(REPO / "conf" / "callbacks" / "default.yaml")
    for name in ("model_checkpoint", "last_checkpoint", "step_checkpoint"):
        cfg[name].dirpath = str(dirpath)
    cfg.step_checkpoint.every_n_train_steps = every_n_train_steps
    del cfg["rich_progress_bar"], cfg["learning_rate_monitor"]
    return OmegaConf.create({"callbacks": cfg})


class _Decaying(L.LightningModule):
    """A model whose monitored val/top1 gets worse every epoch after the first."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/top1", 1.0 / (self.current_epoch + 1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_last_ckpt_is_written_every_epoch_even_when_the_monitored_metric_gets_worse(tmp_path):
    """Lightning 2.6 rewrites a monitoring callback's last.ckpt only when the metric improved;
    the configured unmonitored last_checkpoint writes it, so last.ckpt is the newest epoch (to resume)."""
    cfg = _callbacks_cfg(tmp_path / "ckpt", every_n_train_steps=2)
    callbacks = build_callbacks(cfg)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 2)), batch_size=4)
    trainer = L.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    trainer.fit(_Decaying(), train_dataloaders=data, val_dataloaders=data)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.ckpt", "last.ckpt", "step.ckpt"]
    assert load_checkpoint(tmp_path / "ckpt" / "best.ckpt")["epoch"] == 0
    assert load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["epoch"] == 2  # Lightning alone: 0
    assert load_checkpoint(tmp_path / "ckpt" / "step.ckpt")["global_step"] == 8  # 3 steps an epoch
    assert trainer.checkpoint_callback.best_model_path.endswith("best.ckpt")


def test_without_validation_the_run_is_tested_on_its_last_checkpoint(tmp_path):
    callbacks = build_callbacks(_callbacks_cfg(tmp_path / "ckpt"))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(max_epochs=2, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(_Decaying(), train_dataloaders=data)  # no val loader: nothing to monitor
    assert chosen_checkpoint(trainer, "best_val") == str(tmp_path / "ckpt" / "last.ckpt")
    assert load_checkpoint(chosen_checkpoint(trainer, "best_val"))["epoch"] == 1


def test_the_configured_trainer_writes_checkpoints_with_atomic_io(tmp_path):
    cfg = _callbacks_cfg(tmp_path / "ckpt")
    cfg.trainer = OmegaConf.load(REPO / "conf" / "trainer" / "default.yaml")
    cfg.trainer.default_root_dir = str(tmp_path)
    trainer = build_trainer(cfg)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ------------------------------------------------------------------------------------------------
# stores

_STORE_WRITER = """
import sys, time, numpy as np
from pathlib import Path
from last_lite.data.store import StoreWriter
with StoreWriter(sys.argv[1], "ntu25", 3, class_names=["a"], source="new") as w:
    for i in range(100_000):
        w.add(f"n{i}", np.zeros((1, 4, 25, 3)), 0)
        if i == 20:
            Path(sys.argv[2]).touch()
        time.sleep(0.002)
"""


def test_a_store_build_killed_midway_leaves_the_previous_store_intact(tmp_path):
    out, marker = tmp_path / "store", tmp_path / "started"
    with StoreWriter(out, "ntu25", 3, class_names=["a"], source="old") as w:
        w.add("kept", np.ones((1, 5, 25, 3)), 0)
    proc = subprocess.Popen([sys.executable, "-c", _STORE_WRITER, str(out), str(marker)], cwd=REPO,
                            env=env_for_subprocess())
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = open_store_if_valid(out, source="old")
    assert store is not None and store.names == ["kept"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("store", "started")]
    assert all(name.startswith(".store.tmp-") for name in leftovers)  # hidden, never at `store`
    with StoreWriter(out, "ntu25", 3, class_names=["a"], source="new") as w:
        w.add("fresh", np.ones((1, 5, 25, 3)), 0)
    assert SkeletonStore(out).names == ["fresh"]


# ------------------------------------------------------------------------------------------------
# every other writer in the package: a temp name, then a rename

WRITE_CALL = re.compile(r"\bopen\([^)]*['\"][wax]b?['\"]|\.write_text\(|\.write_bytes\(|\bnp\.save[z]?\(|"
                        r"np\.savez_compressed\(|torch\.save\(|\.savefig\(|\bonnx\.save\(|save_file\(|"
                        r"json\.dump\(|\.to_csv\(|torch\.onnx\.export\(|shutil\.copy")
# Writes that do not name a temp file on their line, each with the reason it is safe.
ALLOWED = {
    ("last_lite/data/store.py", 'open(self._frames_path, "wb")'): "inside StoreWriter.tmp_dir",
    ("last_lite/data/store.py", "json.dump(meta, f)"): "meta.json inside StoreWriter.tmp_dir",
    ("last_lite/prepare.py", "np.savez("): "into a BytesIO, then atomic_write",
    ("last_lite/export/onnx.py", "torch.onnx.export("): "to `raw`, a temp beside the atomic target",
    ("last_lite/export/quantize.py", "onnx.save(source, str(prep))"): "a work file removed in finally",
    ("last_lite/pipeline/state.py", 'open(log_path, "a" if append else "w"'):
        "a stage's log, streamed while it runs (appended to when the stage resumes)",
    ("last_lite/pipeline/gains.py", 'open(log_path, "a", encoding="utf-8")'):
        "a grid job's log, streamed while it runs (appended to when the job resumes)",
    ("last_lite/export/backends/ort.py", "shutil.copyfile(p, stage / p.name)"):
        "the converter's input, inside a TemporaryDirectory",
}


def test_every_writer_in_the_package_uses_a_temp_name_and_a_rename():
    found = set()
    for path in sorted((REPO / "last_lite").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "last_lite/io.py":  # the helpers themselves
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if WRITE_CALL.search(line) and "tmp" not in line.lower():
                key = next((k for k in ALLOWED if k[0] == rel and k[1] in line), None)
                assert key is not None, f"{rel}: a write without a temp name and a rename: {line.strip()}"
                found.add(key)
    assert found <= set(ALLOWED)


# ------------------------------------------------------------------------------------------------
# export files written outside atomic_write: the .ort files and the Core ML packages (folders)

def test_ort_files_get_their_own_hash_before_they_take_their_name(tmp_path, monkeypatch):
    """The converter's .ort carries its .onnx source's hash: stamped while still in the staging
    folder, a file under the final name always passes its own check."""
    import onnx
    from onnx import TensorProto, helper

    from last_lite.export.backends import ort as ort_backend
    from last_lite.runtime.integrity import KEY, PLACEHOLDER, stamp, verify

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    prop = model.metadata_props.add()
    prop.key, prop.value = KEY, f'"{PLACEHOLDER}"'
    source = tmp_path / "model.onnx"
    onnx.save(model, str(source))
    stamp(source)
    checked = {}
    move = shutil.move

    def checking_move(src, dst):
        if str(src).endswith(".ort"):  # what a reader of `dst` finds from now on
            checked[Path(dst).name] = verify(Path(src).read_bytes(), str(src))
        return move(src, dst)

    monkeypatch.setattr(ort_backend.shutil, "move", checking_move)
    out = tmp_path / "out"
    out.mkdir()
    converted = ort_backend.convert_to_ort([source], out)
    assert checked == {"model.ort": True}
    assert converted["files"]["model.onnx"] == out / "model.ort"
    assert converted["sha256"]["model.onnx"] in (out / "model.ort").read_bytes().decode("latin1")
    assert sorted(p.name for p in out.iterdir()) == ["model.ort", "required_operators.config"]


class _Package:
    """An MLModel as save() sees it: writes an .mlpackage folder."""

    def __init__(self, text: str) -> None:
        self.text = text

    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "Manifest.json").write_text(self.text)


def test_a_coreml_package_is_replaced_by_renames_and_never_half_deleted(tmp_path, monkeypatch):
    from last_lite.export import coreml

    path, plain = tmp_path / "model.mlpackage", tmp_path / "plain.mlpackage"
    coreml.save(_Package("one"), path)
    (path / "weights.bin").write_bytes(b"old")
    coreml.save(_Package("two"), path)
    assert [p.name for p in path.iterdir()] == ["Manifest.json"] and (path / "Manifest.json").read_text() == "two"
    plain.write_text("a plain file where the package goes")
    coreml.save(_Package("three"), plain)
    assert (plain / "Manifest.json").read_text() == "three"
    replace = os.replace

    def failing_final_rename(src, dst):
        if Path(dst) == path and Path(src).name == path.name:
            raise OSError("injected: the final rename failed")
        return replace(src, dst)

    monkeypatch.setattr(coreml.os, "replace", failing_final_rename)
    with pytest.raises(OSError, match="injected"):
        coreml.save(_Package("four"), path)
    assert (path / "Manifest.json").read_text() == "two"  # the previous package, back and whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage", "plain.mlpackage"]  # no temp left


def test_a_video_grows_under_a_hidden_name_and_takes_its_own_only_when_complete(tmp_path):
    """A video writer (OpenCV) writes piece by piece: the demo and render give it a hidden name with
    the same suffix (the container), renamed when complete, removed when the run fails."""
    from last_lite.io import GrowingFile

    out = tmp_path / "videos" / "demo.mp4"
    video = GrowingFile(out)
    assert video.partial.parent == out.parent and video.partial.suffix == ".mp4"
    assert video.partial.name.startswith(".")
    video.partial.write_bytes(b"frames")
    assert not out.exists()
    assert video.commit() == out and out.read_bytes() == b"frames" and not video.partial.exists()
    failed = GrowingFile(out)
    failed.partial.write_bytes(b"half")
    failed.discard()
    assert out.read_bytes() == b"frames" and list(out.parent.iterdir()) == [out]
