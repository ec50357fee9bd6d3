"""Issue 19, points 5-7: data readers bounded per input kind, files that are not regular files,
failed preprocessing, stale temp files, the store-replace window, unique run folders, locks.

No shared data needed; the commands that matter are started as subprocesses. No timed
assertions: concurrency is forced (name collisions, a held lock), never hoped for.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import data_group
from last_lite.data.ntu_skeleton import SkeletonFormatError, format_skeleton, parse_skeleton_bytes
from last_lite.data.store import SkeletonStore, StoreWriter, recover_store
from last_lite.io import FileLock, atomic_write_text, clean_stale_temps, host_id

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    return p.pid


def _good_skeleton(seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    spread = (0.3, 0.8, 0.2)  # taller than wide, or denoising calls the body noise
    return format_skeleton([[(7, rng.normal(size=(25, 3)) * spread + (0, 0, 3))] for _ in range(15)])


# ------------------------------------------------------------------------------------------------
# 7. concurrency

_APP = """
import os, sys
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(config_path=".", config_name="app", version_base="1.3")
def main(cfg):
    out = HydraConfig.get().runtime.output_dir
    with open(os.path.join(out, "record.txt"), "x") as fh:   # "x": a shared folder fails here
        fh.write(str(os.getpid()))

main()
"""
_APP_YAML = """
hydra:
  run: {dir: "${oc.env:RUN_BASE}"}
  sweep: {dir: "${oc.env:RUN_BASE}_multi", subdir: "${hydra.job.num}"}
  callbacks:
    unique_run_folder: {_target_: last_lite.run_folder.UniqueRunFolder}
x: 1
"""


def test_runs_started_together_get_their_own_folders(tmp_path):
    """Four runs whose folder name is the same (as two runs in the same second): each gets its own
    folder (base, base-2, ...) and its record; a sweep too; a hydra.run.dir given is kept."""
    (tmp_path / "app.py").write_text(_APP)
    (tmp_path / "app.yaml").write_text(_APP_YAML)
    base = tmp_path / "runs" / "12-00-00_train"
    env = {**ENV, "RUN_BASE": str(base), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([PY, "app.py"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    folders = sorted(d.name for d in base.parent.iterdir())
    assert folders == ["12-00-00_train", "12-00-00_train-2", "12-00-00_train-3", "12-00-00_train-4"]
    pids = {(base.parent / f / "record.txt").read_text() for f in folders}
    assert len(pids) == 4  # one record per run, none lost
    for _ in range(2):  # two sweeps with the same folder name
        r = subprocess.run([PY, "app.py", "-m", "x=1,2"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    for sweep in (f"{base.name}_multi", f"{base.name}_multi-2"):
        assert sorted(p.name for p in (base.parent / sweep).iterdir() if p.is_dir() and p.name[0] != ".") == ["0", "1"]
    given = tmp_path / "given"
    given.mkdir()
    r = subprocess.run([PY, "app.py", f"hydra.run.dir={given}"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and (given / "record.txt").is_file()  # resume: the folder as given


def test_every_command_takes_a_unique_folder():
    """The shipped Hydra config (every training command) lists the callback, last (after the
    config and data checks, so a refused command makes no folder)."""
    cfg = OmegaConf.load(REPO / "conf" / "hydra" / "default.yaml")
    callbacks = list(cfg.callbacks)
    assert callbacks[-1] == "unique_run_folder"
    assert cfg.callbacks.unique_run_folder._target_ == "last_lite.run_folder.UniqueRunFolder"


_HOLD = """
import os, sys
from last_lite.io import FileLock, LockHeld
lock, inside, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
taken = 0
while taken < wanted:  # retry when held: every process gets the lock `wanted` times
    try:
        with FileLock(lock):
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)   # fails if another holder is inside
            os.close(fd)
            taken += 1
            os.unlink(inside)
    except LockHeld:
        pass
print(taken)
"""


def test_a_lock_is_never_held_by_two_processes(tmp_path):
    """Four processes each take one lock 150 times, racing (and retrying when it is held); inside,
    each creates a marker with O_EXCL (which fails if another holder is inside): no failure, every
    take counted, and the lock file is gone at the end."""
    script = tmp_path / "hold.py"
    script.write_text(_HOLD)
    lock, inside = tmp_path / ".x.lock", tmp_path / "inside"
    env = {**ENV, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([PY, str(script), str(lock), str(inside), "150"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert [int(o) for o, _ in outs] == [150] * 4
    assert not lock.exists() and not inside.exists()


def test_the_pipeline_lock_is_atomic_and_never_stale(tmp_path):
    from last_lite.pipeline.state import Lock

    run = tmp_path / "run"
    run.mkdir()
    (run / ".pipeline.lock").write_text("")  # an empty lock file (the old race's leftover)
    with Lock(run):  # ... is no obstacle: the lock is the flock, not the file's content
        code = f"from last_lite.pipeline.state import Lock\nwith Lock({str(run)!r}): pass"
        r = subprocess.run([PY, "-c", code], env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
        assert r.returncode != 0 and f"another pipeline (pid {os.getpid()})" in r.stderr
    # a holder killed with SIGKILL leaves no lock behind that stops the next pipeline
    p = subprocess.Popen([PY, "-c", f"from last_lite.pipeline.state import Lock\nimport sys\n"
                          f"with Lock({str(run)!r}):\n print('held', flush=True); sys.stdin.read()"],
                         env={**ENV, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.send_signal(signal.SIGKILL)
    p.wait()
    with Lock(run):
        pass


def test_two_prepare_runs_on_one_out_dir(tmp_path):
    """While one prepare holds out_dir, a second stops at once (exit 1, one line naming the first's
    pid) and touches nothing; then it runs."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A001.skeleton").write_text(_good_skeleton())
    out = tmp_path / "ntu60"
    cmd = [PY, "-m", "last_lite.prepare", f"raw_dir={raw}", f"out_dir={out}", "missing_list=none",
           "num_workers=1", "progress=false"]
    with FileLock(tmp_path / ".ntu60.lock", what="another prepare"):
        r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert r.returncode == 1
    assert f"another prepare (pid {os.getpid()}) holds the lock" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "ntu60.work").exists()
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(SkeletonStore(out)) == 1 and not (tmp_path / ".ntu60.lock").exists()


# ------------------------------------------------------------------------------------------------
# 6. files

def test_prepare_skips_symlinks_loops_and_fifos_with_a_report_line(tmp_path):
    from last_lite.prepare import run_prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A001.skeleton").write_text(_good_skeleton())
    os.symlink(raw / "nowhere", raw / "S001C001P001R001A002.skeleton")
    os.symlink("S001C001P001R001A003.skeleton", raw / "S001C001P001R001A003.skeleton")
    os.mkfifo(raw / "S001C001P001R001A004.skeleton")  # would block a plain open() forever
    s = run_prepare("ntu60", raw, tmp_path / "out", missing_list="none", num_workers=1, progress=False)
    assert s["kept"] == 1 and s["skipped"] == {"not a regular file": 3}
    reasons = {f["name"][-3:]: f["reason"] for f in s["skipped_files"]}
    assert reasons["002"].endswith("dangling symlink")
    assert reasons["003"].endswith("symlink loop")
    assert reasons["004"].endswith("a FIFO")
    # the parser itself never blocks on a FIFO either (a file replaced after the listing)
    with pytest.raises(SkeletonFormatError, match="not a regular file"):
        from last_lite.data.ntu_skeleton import read_skeleton
        read_skeleton(raw / "S001C001P001R001A004.skeleton")


def test_prepare_fails_when_no_file_is_usable(tmp_path):
    """Every file bad: exit 1, the reasons printed, no store. Only unrecognised names (issue 20):
    exit 1 and a line saying what was found and what a name must look like."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A001.skeleton").write_text("junk\n")
    os.symlink(raw / "nowhere", raw / "S001C001P001R001A002.skeleton")
    out = tmp_path / "out"
    cmd = [PY, "-m", "last_lite.prepare", f"raw_dir={raw}", f"out_dir={out}", "missing_list=none",
           "num_workers=1", "progress=false"]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "none of the 2 ntu60 files is usable" in r.stderr and "junk token" in r.stdout
    assert "dangling symlink" in r.stdout and not out.exists()
    names = tmp_path / "names"
    names.mkdir()
    (names / "walk.skeleton").write_text("1\n0\n")
    (names / "notes.txt").write_text("")
    r = subprocess.run([*cmd[:3], f"raw_dir={names}", *cmd[4:]], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "1 not an NTU sample name (e.g. walk.skeleton)" in r.stderr
    assert "1 not ending in .skeleton" in r.stderr and "S001C001P001R001A001.skeleton" in r.stderr


_KILLED_WRITER = """
import sys
from pathlib import Path
import numpy as np
from last_lite.io import atomic_write
from last_lite.data.store import StoreWriter

target = Path(sys.argv[1])
def write(tmp):
    tmp.write_bytes(b"x" * 1000)
    w = StoreWriter(target.with_name("store"), "ntu25", 3)
    w.add("a", np.zeros((1, 4, 25, 3), np.float32), 0)
    print("ready", flush=True)
    sys.stdin.read()   # killed here: a temp file and a temp store folder are left
atomic_write(target, write)
"""


def test_temp_files_of_killed_writers_are_cleaned_at_the_next_write(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(_KILLED_WRITER)
    target = tmp_path / "last.ckpt"
    p = subprocess.Popen([PY, str(script), str(target)], env={**ENV, "PYTHONPATH": str(REPO)},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = sorted(x.name for x in tmp_path.iterdir() if x.name.startswith("."))
    assert any(n.startswith(".last.ckpt.") for n in left) and any(n.startswith(".store.tmp-") for n in left)
    # temps another process may still be writing are kept: a live pid, another host, the old form
    live = tmp_path / f".last.ckpt.{host_id()}-{os.getppid()}-abc.tmp"
    other_host = tmp_path / f".last.ckpt.{'0' * 8 if host_id() != '0' * 8 else '1' * 8}-{_dead_pid()}-abc.tmp"
    old_form = tmp_path / ".last.ckpt.k3j4h5.tmp"
    for f in (live, other_host, old_form):
        f.write_text("")
    atomic_write_text(target, "new")
    StoreWriter(tmp_path / "store", "ntu25", 3).abort()
    left = sorted(x.name for x in tmp_path.iterdir() if x.name.startswith("."))
    assert left == sorted([live.name, other_host.name, old_form.name])
    assert target.read_text() == "new"
    assert clean_stale_temps(target) == []


def test_a_store_left_under_its_old_name_by_a_kill_is_recovered(tmp_path):
    """A kill between the two renames of a replacement leaves the store only at
    .NAME.old-<host>-<pid>-<random>: the next open (or write) moves it back. Replacements use an
    atomic exchange where the system has one, so the window does not exist there."""
    store = tmp_path / "store"
    for value in (1.0, 2.0):
        with StoreWriter(store, "ntu25", 3) as w:
            w.add("a", np.full((1, 4, 25, 3), value, np.float32), 0)
    assert SkeletonStore(store)[0][0, 0, 0, 0] == 2.0  # replaced, nothing else left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    aside = tmp_path / f".store.old-{host_id()}-{_dead_pid()}-0123abcd"
    os.rename(store, aside)  # as the kill leaves it
    assert SkeletonStore(store)[0][0, 0, 0, 0] == 2.0 and not aside.exists()
    live = tmp_path / f".store.old-{host_id()}-{os.getppid()}-0123abcd"
    os.rename(store, live)  # a writer that is still running: left alone
    assert not recover_store(store) and live.exists()


# ------------------------------------------------------------------------------------------------
# 5. data

def _nw_ucla_folder(root: Path, nan_name: str) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for a, label in ((1, 1), (2, 2)):
        for v in (1, 2, 3):
            name = f"a{a:02d}_s01_e01_v{v:02d}"
            skel = rng.normal(size=(12, 20, 3)) + (0, 0, 3)
            doc = {"skeletons": [[[float(c) for c in j] for j in f] for f in skel], "label": label}
            text = json.dumps(doc)
            if name == nan_name:
                text = json.dumps({"skeletons": [[["NaN"] * 3] * 20] * 12, "label": label}).replace('"NaN"', "NaN")
            (root / f"{name}.json").write_text(text)


def test_an_all_nan_sample_is_a_per_sample_problem_naming_the_file(tmp_path):
    """NW-UCLA (and any 3D source: the shared pre-normalisation) with one sample whose frames are
    all NaN: the store is built, the sample recorded as non-finite under its file's name, and
    data.on_bad_values handles it (drop: the rest trains; error: the message names it)."""
    from last_lite.data.sources.nw_ucla import NWUCLASource

    _nw_ucla_folder(tmp_path / "nw", "a02_s01_e01_v02")
    store = NWUCLASource(tmp_path / "nw").build(tmp_path / "cache")
    assert [store.names[i] for i in store.nonfinite] == ["a02_s01_e01_v02"]
    # the neighbour of prepare's FIFO case: a FIFO among the JSON files is refused, not waited on
    from last_lite.data.sources.nw_ucla import read_sample

    os.mkfifo(tmp_path / "nw" / "a01_s02_e01_v01.json")
    with pytest.raises(SkeletonFormatError, match="not a regular file"):
        read_sample(tmp_path / "nw" / "a01_s02_e01_v01.json")
    from last_lite.data.store import map_npy  # the custom folder's .npy reader

    os.mkfifo(tmp_path / "clip.npy")
    with pytest.raises(OSError, match="not a regular file"):
        map_npy(tmp_path / "clip.npy")


def test_an_all_nan_custom_3d_sample_is_dropped_or_named(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "custom"
    (root / "clips").mkdir(parents=True)
    rows = []
    for i in range(12):
        x = rng.normal(size=(10, 25, 3)) + (0, 0, 3)
        name = "clips/all_nan" if i == 4 else f"clips/c{i}"
        if i == 4:
            x[:] = np.nan
        np.save(root / f"{name}.npy", x.astype(np.float32))
        rows.append({"name": name, "label": ["wave", "sit"][i % 2], "split": "test" if i % 4 == 3 else "train"})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "layout.yaml").write_text("ntu25\n")
    for mode in ("drop", "error"):
        cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
                                "data": data_group("custom")})
        cfg.data.update({"on_bad_values": mode, "clip_len": 8, "batch_size": 4, "val_fraction": 0.2})
        cfg.data.source.layout = "ntu25"
        dm = instantiate(cfg.data, _convert_="all")
        if mode == "drop":
            with pytest.warns(UserWarning, match="clips/all_nan"):
                dm.setup("fit")
        else:
            with pytest.raises(ValueError, match="clips/all_nan"):
                dm.setup("fit")


def _npz_with_member(path: Path, key: str, header_shape: tuple, payload: bytes, declared_size: int | None = None):
    """An npz whose ``key`` member declares ``header_shape`` (float64) but holds ``payload``."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(2, 4, 150)).astype(np.float32), "y_train": np.eye(3)[[0, 1]],
              "x_test": rng.normal(size=(1, 4, 150)).astype(np.float32), "y_test": np.eye(3)[[2]]}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, arr in arrays.items():
            if k == key:
                header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
                header["shape"] = header_shape
                import io
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, header)
                zf.writestr(f"{k}.npy", buf.getvalue() + payload)
            else:
                import io
                buf = io.BytesIO()
                np.save(buf, arr)
                zf.writestr(f"{k}.npy", buf.getvalue())


@pytest.mark.parametrize("case", ["row_of_2^28", "labels_2^28_zeros", "lying_size"])
def test_a_ctrgcn_member_declaring_a_huge_array_is_refused_from_its_header(tmp_path, case):
    from last_lite.data.sources.ctrgcn import CTRGCNSource

    path = tmp_path / "bomb.npz"
    if case == "row_of_2^28":  # one row of 2^28 float64 (2.1 GB) in a small archive
        _npz_with_member(path, "y_train", (1, 1 << 28), b"\0" * (1 << 20))
    elif case == "labels_2^28_zeros":  # 2^28 zeros compress 1000:1: a 2 MB archive holding 2 GB
        _npz_with_member(path, "y_train", (1 << 28,), b"\0" * (8 << 20))
    else:  # the member's size in the zip directory says 2 GB; the data is 1 MB
        _npz_with_member(path, "y_train", (1 << 28,), b"\0" * (1 << 20))
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("y_train.npy")
        size = info.file_size.to_bytes(4, "little")
        data = data.replace(size, ((1 << 31) - 1).to_bytes(4, "little"))
        path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(SkeletonFormatError, match="bomb.npz"):
            CTRGCNSource(path).build(tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert not any((tmp_path / "cache").glob("ctrgcn-*"))


def test_an_ntu_file_of_empty_frames_and_many_bodies_is_bounded(tmp_path):
    """180 KB of mostly empty frames listing two body IDs cost 160 MB of dense arrays: now
    refused from the counts (naming the file), memory bounded by the file's size."""
    good = _good_skeleton().split("\n", 1)[1]  # 15 frames of one body, without the frame count
    frames = good.rstrip("\n").split("\n")
    per_frame = 1 + 1 + 1 + 25  # body count, body info, joint count, joints
    bodies = []
    for b in range(2):  # two distinct body IDs, one frame each
        block = frames[:per_frame]
        block[1] = f"{1000 + b}" + block[1][block[1].index(" "):]
        bodies.append("\n".join(block))
    n_empty = 90_000  # 2 bodies x 90,002 frames: under the old slot cap (200,000), 160 MB dense
    text = f"{n_empty + 2}\n" + "\n".join(bodies) + "\n" + "0\n" * n_empty
    data = text.encode()
    assert len(data) < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(SkeletonFormatError, match="implausible.*mostly empty"):
            parse_skeleton_bytes(data, tmp_path / "S001C001P001R001A001.skeleton")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * len(data) + (16 << 20)
