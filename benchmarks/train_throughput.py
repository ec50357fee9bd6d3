"""Training-step throughput and peak memory, side by side, beside each model's FLOP floor.

    python benchmarks/train_throughput.py [--models ...] [--batch 16] [--threads 2] [--steps 8]
        [--precisions 32 bf16] [--compile]

Each model runs in its own subprocess (so peak RSS is its own); the FLOP floor is
3 x forward FLOPs (forward + backward) over this machine's measured float32 matmul rate.
``--precisions 32 bf16`` adds a row per model trained under bfloat16 autocast (what
``trainer.precision=bf16-mixed`` does on a CPU; fast where the CPU has AMX or AVX512-BF16). Prints a
table and writes outputs/benchmarks/train_throughput.json. ``--compile`` adds a row per model and
precision with the network's features under ``torch.compile`` (what ``module.compile_features=true``
does in training), with its compile time (the first step). Medians over the timed steps; the
machine is shared, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODELS = ["last_e_v3_base", "last_lite_small", "efficientgcn_b0"]


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 10) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def measure_one(name: str, batch: int, threads: int, steps: int, frames: int, persons: int,
                precision: str = "32", compiled: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    from last_lite.models.profile import profile_model
    from last_lite.models.registry import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, num_classes=60)
    flops = profile_model(model, frames, persons).flops
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, frames, 25, persons)
    y = torch.randint(0, 60, (batch,))
    features = torch.compile(model.forward_features) if compiled else model.forward_features
    times, first_step_s = [], None
    for step in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model.forward_head(features(x)["pooled"]), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 0:
            first_step_s = time.perf_counter() - start
        if step >= 2:  # the first steps warm up allocators and kernels (and compile)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"model": name, "precision": precision, "compiled": compiled, "first_step_s": first_step_s,
            "samples_per_s": batch / step_s, "step_ms": 1000 * step_s,
            "forward_gflops_per_sample": flops / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["32"], choices=["32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.batch, args.threads, args.steps, args.frames,
                                     args.persons, args.precisions[0], args.compile)))
        return

    rate = matmul_gflops(args.threads)
    rows = []
    compile_modes = [False, True] if args.compile else [False]
    for name, precision, compiled in [(m, p, c) for m in args.models for p in args.precisions
                                      for c in compile_modes]:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--batch", str(args.batch),
                              "--threads", str(args.threads), "--steps", str(args.steps),
                              "--frames", str(args.frames), "--persons", str(args.persons),
                              "--precisions", precision, *(["--compile"] if compiled else [])],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        floor_s = 3 * row["forward_gflops_per_sample"] / rate  # seconds per sample at peak matmul rate
        row["flop_floor_samples_per_s"] = 1 / floor_s
        row["fraction_of_floor"] = row["samples_per_s"] / row["flop_floor_samples_per_s"]
        rows.append(row)

    print(f"training step, batch {args.batch}, T={args.frames}, V=25, M={args.persons}, "
          f"{args.threads} threads; matmul {rate:.0f} GFLOP/s")
    print(f"{'model':<18}{'prec':>5}{'compiled':>9}{'samples/s':>10}{'ms/step':>10}{'floor s/s':>11}"
          f"{'of floor':>9}{'peak MB':>9}{'1st step s':>11}")
    for r in rows:
        print(f"{r['model']:<18}{r['precision']:>5}{'yes' if r['compiled'] else 'no':>9}{r['samples_per_s']:>10.1f}"
              f"{r['step_ms']:>10.0f}{r['flop_floor_samples_per_s']:>11.1f}{r['fraction_of_floor']:>9.0%}"
              f"{r['peak_rss_mb']:>9.0f}{r['first_step_s']:>11.1f}")
    from last_lite.io import atomic_write_json

    result = {"batch": args.batch, "threads": args.threads, "frames": args.frames, "persons": args.persons,
              "matmul_gflops": rate, "load_average": list(__import__("os").getloadavg()), "rows": rows}
    path = atomic_write_json(ROOT / "outputs" / "benchmarks" / "train_throughput.json", result)
    print(f"written {path}")


if __name__ == "__main__":
    main()
