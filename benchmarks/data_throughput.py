"""NTU data pipeline throughput: raw parser, full preprocessing (projected to NTU-60), loader.

    .venv/bin/python benchmarks/data_throughput.py                  # 600 synthetic files
    .venv/bin/python benchmarks/data_throughput.py --files 2000 --workers 2

Rows:

- ``parse``: :func:`last_lite.data.ntu_skeleton.read_skeleton` on the genuine files in
  ``../shared/data/ntu/raw`` (+ ``raw_crlf``), repeated (one core; files/s, MB/s);
- ``parse+denoise+normalize``: the per-file work of ``last_lite.prepare`` on the same files;
- ``prepare``: ``run_prepare`` (all workers, shards, merge, store) on synthetic raw files written
  in the exact NTU format with NTU-60's statistics (50-300 frames, median ~85; actions 50-60 are
  two-person, ~18%; ~270 KB per file on average, ~15 GB for 56,880 files), timed on ``--files``
  files and scaled to 56,880; also the projected store size and the peak RSS (this process and
  the largest worker, from ``resource.getrusage``);
- ``loader``: ``SkeletonDataModule`` samples/s at T=64 (train with augmentation, and test) on the
  store just written, when ``last_lite.data.datamodule`` exists.

Synthetic files are just written, so they are read from the page cache: the real 15 GB also have
to come off the disk (about 85 MB/s for the 3-minute target).

The table is printed and the numbers are written (atomically) to
``outputs/benchmarks/data_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from last_lite.data.normalize import pre_normalize_3d  # noqa: E402
from last_lite.data.ntu_skeleton import denoise, format_skeleton, read_skeleton  # noqa: E402

NTU = REPO.parent / "shared" / "data" / "ntu"
NTU60_FILES = 56_880
TARGET_S = 180.0
TARGET_RSS_MB = 2048.0


# ----------------------------------------------------------------------------------------------
# synthetic NTU-60-like raw files


def _template(rng: np.random.Generator) -> np.ndarray:
    """A standing body (25, 3) in metres, camera space; a genuine frame when ../shared is there."""
    a001 = NTU / "raw" / "S001C001P001R001A001.skeleton"
    if a001.is_file():
        base = read_skeleton(a001)["xyz"][0, 0]
    else:  # rough Kinect v2 stick figure
        y = np.array([0.0, 0.3, 0.55, 0.7, 0.5, 0.25, 0.0, -0.05, 0.5, 0.25, 0.0, -0.05, 0.0,
                      -0.45, -0.85, -0.9, 0.0, -0.45, -0.85, -0.9, 0.5, -0.1, -0.08, -0.1, -0.08])
        x = np.array([0.0, 0.0, 0.0, 0.0, -0.18, -0.25, -0.27, -0.27, 0.18, 0.25, 0.27, 0.27, -0.08,
                      -0.09, -0.1, -0.1, 0.08, 0.09, 0.1, 0.1, 0.0, -0.28, -0.26, 0.28, 0.26])
        base = np.stack([x, y, np.zeros(25)], 1) + (0.0, 0.0, 3.2)
    return base + rng.normal(0, 0.01, size=base.shape) + (rng.uniform(-1, 1), 0, rng.uniform(-0.5, 0.5))


def _track(rng: np.random.Generator, n: int) -> np.ndarray:
    base = _template(rng)
    t = np.arange(n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 25, 3))
    amp = rng.uniform(0.0, 0.08, size=(1, 25, 3))
    return base + amp * np.sin(t / rng.uniform(5, 15) + phase) + rng.normal(0, 0.003, size=(n, 25, 3))


_NO_ORIENTATION = [3, 15, 19, 21, 22, 23, 24]  # head, feet, hand tips, thumbs


def _fields(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 25, 3) xyz -> (n, 25, 12) with NTU-like depth/colour pixels and joint orientations."""
    n = xyz.shape[0]
    out = np.empty((n, 25, 12))
    out[..., :3] = xyz
    z = np.maximum(xyz[..., 2:3], 0.5)
    out[..., 3:5] = (256.0, 212.0) + 365.0 * xyz[..., :2] / z * (1, -1)
    out[..., 5:7] = (960.0, 540.0) + 1060.0 * xyz[..., :2] / z * (1, -1)
    q = rng.normal(size=(n, 25, 4))
    out[..., 7:11] = q / np.linalg.norm(q, axis=-1, keepdims=True)
    out[:, _NO_ORIENTATION, 7:11] = 0.0  # Kinect gives end joints no orientation ("0 0 0 0")
    out[..., 11] = rng.choice((1, 2), size=(n, 25), p=(0.1, 0.9))
    return out


def synthetic_ntu60(out_dir: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` raw files named like NTU-60 samples, with NTU-60-like lengths and persons."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = set()
    paths = []
    while len(paths) < n:
        s, c, p, r, a = rng.integers(1, 18), rng.integers(1, 4), rng.integers(1, 41), rng.integers(1, 3), rng.integers(1, 61)
        name = f"S{s:03d}C{c:03d}P{p:03d}R{r:03d}A{a:03d}"
        if name in names:
            continue
        names.add(name)
        T = int(np.clip(np.round(np.exp(rng.normal(np.log(85), 0.36))), 50, 300))
        actors = [_fields(_track(rng, T), rng)] + ([_fields(_track(rng, T), rng)] if a >= 50 else [])
        ids = [int(rng.integers(72057594037927936, 72057594037999999)) for _ in range(3)]
        lead = int(rng.integers(1, 4)) if rng.random() < 0.05 else 0  # frames with no body
        ghost_at = int(rng.integers(0, T - 8)) if rng.random() < 0.1 else -1  # short noise body
        ghost = _fields(_track(rng, 8), rng)
        frames = [[] for _ in range(lead)]
        for t in range(T):
            bodies = [(ids[k], actors[k][t]) for k in range(len(actors))]
            if 0 <= ghost_at <= t < ghost_at + 8:
                bodies.append((ids[2], ghost[t - ghost_at]))
            frames.append(bodies)
        path = out_dir / f"{name}.skeleton"
        path.write_text(format_skeleton(frames, newline="\r\n" if rng.random() < 0.5 else "\n"))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# measurements


def bench_parse(files: list[Path], repeats: int) -> dict:
    size = sum(f.stat().st_size for f in files)
    for f in files:  # warm
        read_skeleton(f)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for f in files:
            read_skeleton(f)
    dt = time.perf_counter() - t0
    n = len(files) * repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        for f in files:
            res = denoise(read_skeleton(f))
            pre_normalize_3d(res.keypoints, "ntu25")
    dt2 = time.perf_counter() - t0
    return {
        "files": n,
        "parse_files_per_s": n / dt,
        "parse_mb_per_s": size * repeats / dt / 1e6,
        "full_files_per_s": n / dt2,
        "full_mb_per_s": size * repeats / dt2 / 1e6,
        "mean_file_kb": size / len(files) / 1e3,
    }


def _maxrss_mb() -> tuple[float, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024, child_kb / 1024


def bench_prepare(raw: Path, out: Path, workers: int, chunk_size: int) -> dict:
    from rich.console import Console

    from last_lite.prepare import run_prepare

    files = sorted(raw.glob("*.skeleton"))
    size = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    summary = run_prepare("ntu60", raw, out, missing_list="none", num_workers=workers,
                          chunk_size=chunk_size, progress=False, console=Console(file=open(os.devnull, "w")))
    dt = time.perf_counter() - t0
    store_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    fps = len(files) / dt
    self_mb, child_mb = _maxrss_mb()
    return {
        "files": len(files),
        "kept": summary["kept"],
        "skipped": summary["skipped"],
        "seconds": dt,
        "files_per_s": fps,
        "mb_per_s": size / dt / 1e6,
        "mean_file_kb": size / len(files) / 1e3,
        "projected_raw_gb": size / len(files) * NTU60_FILES / 1e9,
        "projected_ntu60_s": NTU60_FILES / fps,
        "projected_store_gb": store_bytes / len(files) * NTU60_FILES / 1e9,
        "workers": workers,
        "peak_rss_parent_mb": self_mb,
        "peak_rss_largest_worker_mb": child_mb,
        "peak_rss_total_mb_upper": self_mb + workers * child_mb,
    }


def bench_loader(store_dir: Path, batches: int, workers: int) -> dict:
    try:
        from last_lite.data.datamodule import SkeletonDataModule
    except ImportError as exc:
        return {"skipped": f"last_lite.data.datamodule not importable: {exc}"}
    import torch

    torch.set_num_threads(1)
    dm = SkeletonDataModule(str(store_dir), split="xsub", clip_len=64, batch_size=64,
                            num_workers=workers, val_split="test", cache_dir=str(store_dir.parent))
    dm.setup()
    out = {"clip_len": 64, "batch_size": 64, "num_workers": workers}
    for part, loader in (("train", dm.train_dataloader()), ("test", dm.test_dataloader())):
        it = iter(loader)
        x = next(it)[0]  # warm-up (worker start)
        n, t0 = 0, time.perf_counter()
        for _ in range(batches):
            try:
                x = next(it)[0]
            except StopIteration:
                break
            n += x.shape[0]
        dt = time.perf_counter() - t0
        out[f"{part}_samples_per_s"] = n / dt if n else float("nan")
        out[f"{part}_shape"] = list(x.shape)
        del it
    return out


# ----------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=600, help="synthetic raw files to preprocess")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--parse-repeats", type=int, default=20)
    ap.add_argument("--loader-batches", type=int, default=20)
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the synthetic files here")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "data_throughput.json")
    args = ap.parse_args(argv)

    result: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    real = sorted((NTU / "raw").glob("*.skeleton")) + sorted((NTU / "raw_crlf").glob("*.skeleton"))
    if real:
        result["parse_real"] = bench_parse(real, args.parse_repeats)
    else:
        result["parse_real"] = {"skipped": f"no NTU fixtures at {NTU}"}

    tmp = Path(tempfile.mkdtemp(prefix="ntu_bench_")) if args.work_dir is None else args.work_dir
    try:
        raw = tmp / "raw"
        t0 = time.perf_counter()
        if not raw.is_dir() or len(list(raw.glob("*.skeleton"))) != args.files:
            shutil.rmtree(raw, ignore_errors=True)
            synthetic_ntu60(raw, args.files)
        result["synthetic_generation_s"] = time.perf_counter() - t0
        synth = sorted(raw.glob("*.skeleton"))
        result["parse_synthetic"] = bench_parse(synth[:100], 1)
        store = tmp / "ntu60"
        result["prepare"] = bench_prepare(raw, store, args.workers, args.chunk_size)
        try:
            result["loader"] = bench_loader(store, args.loader_batches, args.loader_workers)
        except Exception as exc:  # report, do not lose the other rows
            result["loader"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    finally:
        if args.work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    _print_table(result)
    _write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return result


def _print_table(r: dict) -> None:
    rows = []
    for key, label in (("parse_real", "shared raw files"), ("parse_synthetic", "synthetic files")):
        p = r[key]
        if "skipped" in p:
            rows.append((f"parse ({label})", "skipped", p["skipped"]))
            continue
        rows.append((f"parse ({label})", f"{p['parse_files_per_s']:.0f} files/s",
                     f"{p['parse_mb_per_s']:.1f} MB/s, 1 core, {p['mean_file_kb']:.0f} KB/file"))
        rows.append((f"parse+denoise+normalize ({label})", f"{p['full_files_per_s']:.0f} files/s",
                     f"{p['full_mb_per_s']:.1f} MB/s, 1 core"))
    q = r["prepare"]
    rows.append(("prepare (synthetic, all steps)", f"{q['files_per_s']:.0f} files/s",
                 f"{q['files']} files in {q['seconds']:.1f} s, {q['workers']} workers, {q['mb_per_s']:.0f} MB/s"))
    ok_t = "OK" if q["projected_ntu60_s"] < TARGET_S else "over target"
    rows.append(("projected NTU-60 (56,880 files)", f"{q['projected_ntu60_s']:.0f} s",
                 f"target < {TARGET_S:.0f} s: {ok_t}; raw {q['projected_raw_gb']:.1f} GB"))
    rows.append(("projected NTU-60 store", f"{q['projected_store_gb']:.2f} GB", "target < 3 GB"))
    ok_m = "OK" if q["peak_rss_total_mb_upper"] < TARGET_RSS_MB else "over target"
    rows.append(("peak RSS", f"{q['peak_rss_total_mb_upper']:.0f} MB",
                 f"parent {q['peak_rss_parent_mb']:.0f} MB + {q['workers']} x worker "
                 f"{q['peak_rss_largest_worker_mb']:.0f} MB (upper bound); target < {TARGET_RSS_MB:.0f} MB: {ok_m}"))
    ld = r.get("loader", {})
    if "skipped" in ld:
        rows.append(("DataLoader T=64", "skipped", ld["skipped"]))
    else:
        rows.append(("DataLoader T=64 train (augmented)", f"{ld['train_samples_per_s']:.0f} samples/s",
                     f"batch {ld['batch_size']}, {ld['num_workers']} workers, {ld['train_shape']}"))
        rows.append(("DataLoader T=64 test", f"{ld['test_samples_per_s']:.0f} samples/s",
                     f"batch {ld['batch_size']}, {ld['num_workers']} workers"))
    w = max(len(a) for a, _, _ in rows)
    v = max(len(b) for _, b, _ in rows)
    print(f"\n{'measurement':<{w}}  {'value':>{v}}  notes")
    print("-" * (w + v + 40))
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>{v}}  {c}")


if __name__ == "__main__":
    main()
