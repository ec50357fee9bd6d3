"""CPU latency of the model family: PyTorch vs ONNX Runtime FP32 / INT8 vs LiteRT FP32 / INT8.

    .venv/bin/python benchmarks/latency.py [--models last_lite_small ...] [--threads 2]
        [--no-litert] [--profile-int8]

LiteRT (TFLite through litert-torch, XNNPACK on the CPU; the full-integer INT8 file of
``backend=tflite``) is timed when the ``[tflite]`` extra is installed. The CPU's model and its
SIMD flags (AVX2, AVX-512, VNNI, AMX; NEON / dot-product on ARM) are printed first: INT8 pays
only where the CPU has integer dot-product instructions. ``--profile-int8`` adds ONNX Runtime's
per-operator profile (summed kernel time per operator type) of each model's INT8 and FP32 graphs.

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


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
              "asimd", "asimddp", "sve", "i8mm", "bf16")


def cpu_info() -> dict:
    """The CPU's model name and which SIMD flags it has (Linux /proc/cpuinfo; else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "simd": [f for f in SIMD_FLAGS if f in flags],
            "int8_dot_product": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})}


def litert_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert"))


def ort_op_profile(path: Path, x: np.ndarray, runs: int = 30) -> dict[str, float]:
    """ONNX Runtime's profiler on one thread: mean kernel time per run (ms) per operator type."""
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix("")) + "_prof"
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(5 + runs):
        sess.run(None, {"skeleton": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    run_starts = [e["ts"] for e in events if e.get("name") == "model_run"]
    cutoff = sorted(run_starts)[5] if len(run_starts) > 5 else 0  # skip the warm-up runs
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= cutoff:
            op = (e.get("args") or {}).get("op_name", "?")
            per_op.setdefault(op, []).append(e["dur"] / 1e3)
    total_runs = max(1, min(runs, len(run_starts) - 5))
    return dict(sorted(((op, sum(v) / total_runs) for op, v in per_op.items()), key=lambda kv: -kv[1]))


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
                batch: int, litert: bool = False, profile: bool = False) -> dict:
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
    if profile:
        out["ort_profile_ms"] = {"ort_fp32": ort_op_profile(fp32, x1), "ort_int8": ort_op_profile(int8, x1)}
    keys = ["pytorch", "ort_fp32", "ort_int8"]
    if litert:
        try:
            out.update(bench_litert(model, threads, calib, x1, xb, work / name, repeats))
            keys += ["litert_fp32", "litert_int8"]
        except Exception as exc:  # a model the converter refuses: say so, time the rest
            out["litert_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    for key in keys:
        out[key]["b32_samples_per_s"] = batch / (out[key]["b32_ms"] * 1e-3)
    fastest = min(keys, key=lambda k: out[k]["b1_cpu_ms_1thread"])
    out["fastest_b1_cpu_1thread"] = fastest
    out["int8_speedup_b1"] = out["ort_fp32"]["b1_ms"] / out["ort_int8"]["b1_ms"]
    out["int8_speedup_b32"] = out["ort_fp32"]["b32_ms"] / out["ort_int8"]["b32_ms"]
    out["int8_speedup_b1_cpu_1thread"] = (out["ort_fp32"]["b1_cpu_ms_1thread"]
                                          / out["ort_int8"]["b1_cpu_ms_1thread"])
    return out


def litert_versions(litert: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("litert-torch", "ai-edge-litert") if litert else ():
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def bench_litert(model, threads: int, calib: list[np.ndarray], x1: np.ndarray, xb: np.ndarray,
                 stem: Path, repeats: int) -> dict:
    """LiteRT FP32 and full-integer INT8 (as ``backend=tflite`` writes them) through XNNPACK."""
    from last_lite.export.onnx import prepare_for_export
    from last_lite.export.tflite import convert_fp32, convert_int8
    from last_lite.runtime.tflite import TFLiteSession

    prepared, _ = prepare_for_export(model)
    files = {"litert_fp32": convert_fp32(prepared, T, M),
             "litert_int8": convert_int8(prepared, T, M, calib)[0]}
    out = {}
    for key, data in files.items():
        sess, sess1 = TFLiteSession(data, threads), TFLiteSession(data, 1)
        feed1, feedb = {"skeleton": x1}, {"skeleton": xb}
        out[key] = {"b1_ms": median_ms(lambda: sess.run(None, feed1), 5, repeats),
                    "b32_ms": median_ms(lambda: sess.run(None, feedb), 2, max(3, repeats // 5)),
                    "b1_cpu_ms_1thread": median_cpu_ms(lambda: sess1.run(None, feed1), 3, max(5, repeats // 2)),
                    "file_bytes": len(data)}
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
    p.add_argument("--no-litert", action="store_true", help="skip LiteRT even when the [tflite] extra is installed")
    p.add_argument("--profile-int8", action="store_true",
                   help="ONNX Runtime per-operator profile of the INT8 and FP32 graphs (one thread)")
    args = p.parse_args(argv)
    litert = not args.no_litert and litert_available()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['machine']}, {cpu['cores']} logical cores); SIMD: "
          f"{' '.join(cpu['simd']) or '-'}; integer dot product (VNNI / AMX / SDOT): "
          f"{'yes' if cpu['int8_dot_product'] else 'NO (INT8 GEMMs gain little)'}", flush=True)
    if not litert:
        print("LiteRT: not timed (" + ("--no-litert" if args.no_litert else
                                      "install the [tflite] extra: pip install -e '.[tflite]'") + ")")

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
            r = bench_model(name, args.threads, calib, Path(tmp), args.repeats, args.batch, litert,
                            args.profile_int8)
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
    if litert:
        print("\nLiteRT (XNNPACK) beside ONNX Runtime: batch 1, ONE thread, median CPU time (ms); "
              "the fastest backend per model; its ratio to the FLOP floor")
        h3 = (f"{'model':18s} {'torch':>7s} {'ORT32':>7s} {'ORT8':>7s} {'LRT32':>7s} {'LRT8':>7s} "
              f"{'fastest':>12s} {'/floor':>7s}")
        print(h3)
        print("-" * len(h3))
        for name, r in results.items():
            if "litert_fp32" not in r:
                print(f"{name:18s} LiteRT failed: {r.get('litert_error')}")
                continue
            best = r["fastest_b1_cpu_1thread"]
            print(f"{name:18s} " + " ".join(f"{r[k]['b1_cpu_ms_1thread']:7.2f}" for k in
                                            ("pytorch", "ort_fp32", "ort_int8", "litert_fp32", "litert_int8"))
                  + f" {best:>12s} {r[best]['b1_cpu_ms_1thread'] / r['floor_b1_ms']:7.2f}")
    if args.profile_int8:
        for name, r in results.items():
            prof = r.get("ort_profile_ms") or {}
            for key in ("ort_int8", "ort_fp32"):
                ops = prof.get(key) or {}
                total = sum(ops.values())
                print(f"\n{name} {key}: ONNX Runtime profile, one thread, kernel ms per run by operator "
                      f"(total {total:.2f} ms)")
                for op, ms in list(ops.items())[:12]:
                    print(f"  {op:28s} {ms:7.3f}  {100 * ms / max(total, 1e-9):5.1f}%")
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
        "cpu": cpu["model"], "cpu_count": os.cpu_count(), "cpu_info": cpu,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version(), **litert_versions(litert)},
        "wall_time_s": round(time.time() - started, 1), "targets": targets, "models": results,
        "command": "benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
