"""CPU latency of the model family: PyTorch vs ONNX Runtime FP32 vs ONNX Runtime INT8.

    .venv/bin/python benchmarks/latency.py [--models last_lite_small ...] [--threads 2]

For each model (random weights: latency does not depend on them; the INT8 calibration uses
synthetic-set samples, since it needs realistic activations): batch-1 latency and batch-32
throughput at T=64, V=25 (ntu25), M=2 on ``--threads`` threads (torch.set_num_threads /
intra_op_num_threads), medians over repeats, beside the FLOP floor: the model's FLOPs
(``last_lite.models.profile.profile_model``) divided by this machine's float32 matmul rate,
measured here with the same thread count. Prints a table and writes
outputs/benchmarks/latency.json atomically (with the load average before and after: other
jobs on the machine inflate every number).

A second table gives the batch-1 median CPU time with ONE thread (``time.thread_time``): the work
done per inference whatever else runs, since on a loaded machine the 2-thread wall times also
measure the wait for a core (and spinning OpenMP / ORT threads make that much worse).

Targets (reported, not asserted): last_lite_small INT8 batch-1 under 6 ms and >= 1.5x faster
than its ONNX Runtime FP32.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("last_lite_nano", "last_lite_small", "last_e_v3_nano", "last_e_v3_base", "efficientgcn_b0")
T, V, M, C = 64, 25, 2, 3


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def median_cpu_ms(fn, warmup: int, repeats: int) -> float:
    """Median CPU time of ``fn`` on the calling thread (ms): with one thread, the work done,
    whatever else the machine is running (wall time under load measures the queue too)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return float(np.median(times) * 1e3)


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """This machine's float32 GEMM rate (GFLOP/s) with torch on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    ms = median_ms(lambda: torch.mm(a, b), 3, repeats)
    return 2 * size ** 3 / (ms * 1e-3) / 1e9


def calibration_samples(n: int, cache_dir: Path) -> list[np.ndarray]:
    from last_lite.data.datamodule import SkeletonDataModule
    from last_lite.data.sources.synthetic import SyntheticSource
    from last_lite.export.quantize import calibration_batches

    dm = SkeletonDataModule(SyntheticSource(), split="xsub", clip_len=T, max_persons=M,
                            cache_dir=str(cache_dir), eval_batch_size=32)
    dm.prepare_data()
    dm.setup()
    return calibration_batches(dm.calibration_dataloader(n, seed=0))


def bench_model(name: str, threads: int, calib: list[np.ndarray], work: Path, repeats: int,
                batch: int) -> dict:
    import torch

    from last_lite.export.onnx import export_onnx, ort_session
    from last_lite.export.quantize import quantize_int8
    from last_lite.models.profile import profile_model
    from last_lite.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=60, layout="ntu25").eval()
    prof = profile_model(model, frames=T, persons=M)
    rng = np.random.default_rng(0)
    pool = np.concatenate(calib)
    x1 = pool[:1]
    xb = pool[rng.integers(0, len(pool), batch)]
    out: dict = {"params": prof.params, "gflops": prof.gflops}

    with torch.inference_mode():
        t1, tb = torch.from_numpy(x1), torch.from_numpy(xb)
        torch.set_num_threads(1)
        cpu1 = median_cpu_ms(lambda: model(t1), 3, max(5, repeats // 2))
        torch.set_num_threads(threads)
        out["pytorch"] = {"b1_ms": median_ms(lambda: model(t1), 5, repeats),
                          "b32_ms": median_ms(lambda: model(tb), 2, max(3, repeats // 5)),
                          "b1_cpu_ms_1thread": cpu1}

    fp32 = work / f"{name}.onnx"
    export_onnx(model, fp32, clip_len=T, max_persons=M)
    src = work / f"{name}_int8src.onnx"
    export_onnx(model, src, clip_len=T, max_persons=M, int8_friendly=True)
    int8 = work / f"{name}_int8.onnx"
    quantize_int8(src, int8, calib)
    for key, path in (("ort_fp32", fp32), ("ort_int8", int8)):
        sess = ort_session(path, threads)
        feed1, feedb = {"skeleton": x1}, {"skeleton": xb}
        out[key] = {"b1_ms": median_ms(lambda: sess.run(None, feed1), 5, repeats),
                    "b32_ms": median_ms(lambda: sess.run(None, feedb), 2, max(3, repeats // 5)),
                    "file_bytes": path.stat().st_size}
        sess1 = ort_session(path, 1)  # one thread: ORT runs on the calling thread
        out[key]["b1_cpu_ms_1thread"] = median_cpu_ms(lambda: sess1.run(None, feed1), 3,
                                                      max(5, repeats // 2))
    for key in ("pytorch", "ort_fp32", "ort_int8"):
        out[key]["b32_samples_per_s"] = batch / (out[key]["b32_ms"] * 1e-3)
    out["int8_speedup_b1"] = out["ort_fp32"]["b1_ms"] / out["ort_int8"]["b1_ms"]
    out["int8_speedup_b32"] = out["ort_fp32"]["b32_ms"] / out["ort_int8"]["b32_ms"]
    out["int8_speedup_b1_cpu_1thread"] = (out["ort_fp32"]["b1_cpu_ms_1thread"]
                                          / out["ort_int8"]["b1_cpu_ms_1thread"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50, help="batch-1 repeats (batch-32: a fifth)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calibration", type=int, default=64, help="synthetic samples for INT8 calibration")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "latency.json")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "outputs" / "cache")
    args = p.parse_args(argv)

    import onnxruntime
    import torch

    from last_lite.io import atomic_write_json

    load_before = os.getloadavg()
    started = time.time()
    rate = matmul_gflops(args.threads)
    calib = calibration_samples(args.calibration, args.cache_dir)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"benchmarking {name} ...", flush=True)
            r = bench_model(name, args.threads, calib, Path(tmp), args.repeats, args.batch)
            r["floor_b1_ms"] = r["gflops"] / rate * 1e3
            results[name] = r
    rate_after = matmul_gflops(args.threads)
    load_after = os.getloadavg()

    header = (f"{'model':18s} {'params':>8s} {'GFLOP':>6s} {'floor':>7s} | {'torch b1':>8s} "
              f"{'ORT32 b1':>8s} {'INT8 b1':>8s} {'x':>5s} | {'torch/s':>8s} {'ORT32/s':>8s} "
              f"{'INT8/s':>8s} {'x':>5s}")
    print(f"\nT={T} V={V} M={M}, {args.threads} threads; matmul rate {rate:.0f} GFLOP/s "
          f"(after: {rate_after:.0f}); load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print("latencies in ms (batch 1), throughput in samples/s (batch %d)" % args.batch)
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:18s} {r['params']:8d} {r['gflops']:6.3f} {r['floor_b1_ms']:7.2f} | "
              f"{r['pytorch']['b1_ms']:8.2f} {r['ort_fp32']['b1_ms']:8.2f} {r['ort_int8']['b1_ms']:8.2f} "
              f"{r['int8_speedup_b1']:5.2f} | {r['pytorch']['b32_samples_per_s']:8.1f} "
              f"{r['ort_fp32']['b32_samples_per_s']:8.1f} {r['ort_int8']['b32_samples_per_s']:8.1f} "
              f"{r['int8_speedup_b32']:5.2f}")
    print("\nbatch 1, ONE thread, median CPU time of the calling thread (ms): the work itself, "
          "insensitive to the machine's load")
    h2 = f"{'model':18s} {'torch':>8s} {'ORT32':>8s} {'INT8':>8s} {'x':>5s}"
    print(h2)
    print("-" * len(h2))
    for name, r in results.items():
        print(f"{name:18s} {r['pytorch']['b1_cpu_ms_1thread']:8.2f} {r['ort_fp32']['b1_cpu_ms_1thread']:8.2f} "
              f"{r['ort_int8']['b1_cpu_ms_1thread']:8.2f} {r['int8_speedup_b1_cpu_1thread']:5.2f}")
    small = results.get("last_lite_small")
    targets = None
    if small:
        targets = {"last_lite_small_int8_b1_under_6ms": small["ort_int8"]["b1_ms"] < 6.0,
                   "last_lite_small_int8_speedup_at_least_1.5x": small["int8_speedup_b1"] >= 1.5}
        print(f"targets: INT8 b1 {small['ort_int8']['b1_ms']:.2f} ms (< 6 ms: "
              f"{targets['last_lite_small_int8_b1_under_6ms']}), speed-up {small['int8_speedup_b1']:.2f}x "
              f"(>= 1.5x: {targets['last_lite_small_int8_speedup_at_least_1.5x']})")
    record = {
        "schema": "last_lite.benchmarks.latency/1", "T": T, "V": V, "M": M, "threads": args.threads,
        "batch": args.batch, "repeats": args.repeats, "statistic": "median",
        "matmul_gflops": {"before": rate, "after": rate_after},
        "loadavg": {"before": list(load_before), "after": list(load_after)},
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "wall_time_s": round(time.time() - started, 1), "targets": targets, "models": results,
        "command": "benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
