"""``python -m last_lite.prepare``: raw NTU files -> store, skipping bad files, resuming, NTUSource."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from last_lite.data.normalize import pre_normalize_3d
from last_lite.data.ntu_skeleton import denoise, format_skeleton, read_sample_list, read_skeleton
from last_lite.data.sources.ntu import NTUSource
from last_lite.data.store import SkeletonStore, StoreError
from last_lite.prepare import load_shard, run_prepare

REPO = Path(__file__).resolve().parents[2]
NTU = REPO.parent / "shared" / "data" / "ntu"
RAW = NTU / "raw"
MISSING60 = NTU / "lists" / "ntu60_missing_skeletons.txt"
needs_shared = pytest.mark.skipif(
    not (RAW / "S001C001P001R001A050.skeleton").is_file() or not MISSING60.is_file(),
    reason=f"NTU fixtures not found at {NTU} (../shared/data is absent in a plain clone)",
)
CORRUPT = "S001C001P001R001A006"


@pytest.fixture
def raw_dir(tmp_path):
    """The six shared raw files, one corrupted file and one file named on the missing list."""
    d = tmp_path / "raw"
    d.mkdir()
    for f in sorted(RAW.glob("*.skeleton")):
        shutil.copyfile(f, d / f.name)
    data = (RAW / "S001C001P001R001A003.skeleton").read_bytes()
    (d / f"{CORRUPT}.skeleton").write_bytes(data[: len(data) // 3])
    missing_name = read_sample_list(MISSING60)[0]
    shutil.copyfile(RAW / "S001C001P001R001A001.skeleton", d / f"{missing_name}.skeleton")
    # not part of NTU-60 (setup 18): ignored
    shutil.copyfile(RAW / "S001C001P001R001A001.skeleton", d / "S018C001P001R001A001.skeleton")
    (d / "notes.txt").write_text("not a skeleton")
    return d


def _run(raw_dir, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("missing_list", MISSING60)
    return run_prepare("ntu60", raw_dir, out, **kw)


@needs_shared
@pytest.mark.shared_data
def test_prepare_end_to_end_and_resume(raw_dir, tmp_path):
    out = tmp_path / "ntu60"
    s = _run(raw_dir, out, num_workers=2, chunk_size=2, keep_work=True)
    assert s["files"] == 8 and s["kept"] == 6
    assert s["skipped"] == {"missing-skeleton list": 1, "parse error": 1}
    bad = [f for f in s["skipped_files"] if f["status"] == "parse error"]
    assert bad[0]["name"] == CORRUPT and f"{CORRUPT}.skeleton" in bad[0]["reason"]
    assert "line" in bad[0]["reason"] and "truncated" in bad[0]["reason"]
    assert s["ignored_files"] == {"not in ntu60": 1}
    assert s["chunks"] == 7 and s["chunks_reused"] == 0  # >= 16 chunks wanted: 1 file each

    store = SkeletonStore(out)
    assert len(store) == 6 and store.layout == "ntu25" and store.channels == 3
    assert store.num_classes == 60
    assert store.names[-1] == "S001C001P001R001A050"
    assert store.labels.tolist() == [0, 1, 2, 3, 4, 49]
    assert store.persons.tolist() == [1, 1, 1, 1, 1, 2]
    assert store.lengths.tolist() == [103, 158, 104, 99, 54, 74]
    assert store.field("camera").tolist() == [1] * 6 and store.field("subject").tolist() == [1] * 6
    assert set(store.splits) == {"xsub", "xview"}
    assert store.split("xsub", "train").tolist() == list(range(6))  # P001 trains in X-Sub
    assert store.split("xview", "test").tolist() == list(range(6))  # C001 tests in X-View
    # the stored sample is the denoised, pre-normalised raw file
    raw = RAW / "S001C001P001R001A050.skeleton"
    want = pre_normalize_3d(denoise(read_skeleton(raw)).keypoints, "ntu25")
    np.testing.assert_array_equal(store.get(5), want)
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["kept"] == 6

    # resume: every shard reused; then one shard lost (an interrupted run): only it is redone
    first = [store.get(i) for i in range(len(store))]
    s2 = _run(raw_dir, out, num_workers=1, chunk_size=2, keep_work=True)
    assert s2["chunks_reused"] == 7 and s2["kept"] == 6
    shards = sorted((tmp_path / "ntu60.work").glob("chunk-*.npz"))
    assert len(shards) == 7
    shards[1].unlink()
    shards[2].write_bytes(b"a shard cut short by a crash")
    s3 = _run(raw_dir, out, num_workers=1, chunk_size=2)
    assert s3["chunks_reused"] == 5 and s3["kept"] == 6
    assert not (tmp_path / "ntu60.work").exists()  # removed after success without keep_work
    store = SkeletonStore(out)
    for i, a in enumerate(first):
        np.testing.assert_array_equal(store.get(i), a)


@needs_shared
@pytest.mark.shared_data
def test_changed_raw_file_invalidates_its_shard(raw_dir, tmp_path):
    out = tmp_path / "ntu60"
    _run(raw_dir, out, num_workers=1, chunk_size=3, keep_work=True)
    fixed = raw_dir / f"{CORRUPT}.skeleton"
    shutil.copyfile(RAW / "S001C001P001R001A003.skeleton", fixed)
    os.utime(fixed, ns=(1, 1))
    s = _run(raw_dir, out, num_workers=1, chunk_size=3)
    assert s["kept"] == 7 and s["chunks_reused"] == s["chunks"] - 1


def test_prepare_synthetic_without_shared_data(tmp_path):
    """No ../shared needed: synthetic files, one empty after denoising, no missing list."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for a in (1, 2, 52):
        shape = (0.3, 0.8, 0.2)  # taller than wide, or the spread filter calls it noise
        frames = [[(7, rng.normal(size=(25, 3)) * shape + (0, 0, 3))] for _ in range(20)]
        if a == 52:
            frames = [f + [(8, rng.normal(size=(25, 3)) * shape + (1, 0, 3))] for f in frames]
        (raw / f"S002C002P003R001A{a:03d}.skeleton").write_text(format_skeleton(frames))
    (raw / "S002C002P003R001A003.skeleton").write_text("3\n0\n0\n0\n")  # never a body
    s = run_prepare("ntu60", raw, tmp_path / "out", missing_list="none", num_workers=1, progress=False)
    assert s["kept"] == 3 and s["skipped"] == {"empty after denoising": 1}
    store = SkeletonStore(tmp_path / "out")
    assert store.persons.tolist() == [1, 1, 2] and store.lengths.tolist() == [20, 20, 20]
    assert store.split("xsub", "test").tolist() == [0, 1, 2]  # P003 tests in X-Sub
    assert store.split("xview", "train").tolist() == [0, 1, 2]  # C002 trains in X-View


def test_a_given_work_dir_keeps_its_other_files_and_odd_names_are_ignored(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    frames = [[(7, np.random.default_rng(0).normal(size=(25, 3)) * (0.3, 0.8, 0.2) + (0, 0, 3))]] * 5
    for name in ("S002C002P003R001A001", "S002C002P003R001A0601", "S002C002P003R001A001 (1)"):
        (raw / f"{name}.skeleton").write_text(format_skeleton(frames))
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("not prepare's")
    s = run_prepare("ntu60", raw, tmp_path / "out", work_dir=work, missing_list="none",
                    num_workers=1, progress=False)
    assert s["kept"] == 1 and s["ignored_files"] == {"not an NTU sample name": 2}
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # only its own shards went
    run_prepare("ntu60", raw, tmp_path / "out2", missing_list="none", num_workers=1, progress=False)
    assert not (tmp_path / "out2.work").exists()  # a work folder left empty is removed


def test_ntu_source(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    frames = [[(1, rng.normal(size=(25, 3)))] for _ in range(12)]
    (raw / "S001C001P001R001A001.skeleton").write_text(format_skeleton(frames))
    with pytest.raises(FileNotFoundError, match="last_lite.prepare"):
        NTUSource(tmp_path / "ntu60", "xsub").build(tmp_path / "cache")
    run_prepare("ntu60", raw, tmp_path / "ntu60", missing_list="none", num_workers=1, progress=False)
    store = NTUSource(tmp_path / "ntu60", "xview").build(tmp_path / "cache")
    assert len(store) == 1 and store.split("xview", "test").tolist() == [0]
    with pytest.raises(StoreError, match="dataset=ntu120"):
        NTUSource(tmp_path / "ntu60", "xset").build(tmp_path / "cache")
    with pytest.raises(ValueError):
        NTUSource(tmp_path / "ntu60", "xcam")
    assert not (tmp_path / "cache").exists()


def test_cli_writes_nothing_into_cwd(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(2)
    frames = [[(1, rng.normal(size=(25, 3)))] for _ in range(15)]
    (raw / "S001C001P001R001A001.skeleton").write_text(format_skeleton(frames))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "last_lite.prepare", "dataset=ntu60", f"raw_dir={raw}",
         f"out_dir={tmp_path / 'out'}", "missing_list=none", "num_workers=1", "progress=false"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 of 1 files kept" in proc.stdout
    assert list(cwd.iterdir()) == []
    assert len(SkeletonStore(tmp_path / "out")) == 1


def test_load_shard_rejects_inconsistent(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, frames=np.zeros((5, 25, 3), np.float32), persons=np.array([1]), lengths=np.array([3]),
             status=np.frombuffer(json.dumps([{"name": "x", "status": "kept"}]).encode(), np.uint8))
    with pytest.raises(ValueError, match="inconsistent"):
        load_shard(p)


def test_load_shard_light_check(tmp_path):
    from last_lite.prepare import process_chunk

    rng = np.random.default_rng(3)
    raw = tmp_path / "S001C001P001R001A001.skeleton"
    raw.write_text(format_skeleton([[(1, rng.normal(size=(25, 3)) * (0.3, 0.8, 0.2))] for _ in range(13)]))
    shard = tmp_path / "chunk.npz"
    res = process_chunk((str(shard), [str(raw), str(tmp_path / "S001C001P001R001A002.skeleton")], True))
    assert res["counts"] == {"kept": 1, "parse error": 1}
    frames, persons, lengths, status = load_shard(shard)
    assert frames.shape == (13, 25, 3) and persons.tolist() == [1] and lengths.tolist() == [13]
    assert load_shard(shard, frames=False)[0] is None
    assert [s["status"] for s in status] == ["kept", "parse error"]
