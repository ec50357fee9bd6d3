"""Training-step throughput and peak memory, side by side, beside each model's FLOP floor.

    python benchmarks/train_throughput.py [--models ...] [--batch 16] [--threads 2] [--steps 8]
        [--layout ucla20 --frames 52 --persons 1] [--precisions auto 32 bf16] [--compile]
        [--baseline <git commit> [--rounds 3]]

``--baseline`` is the A/B mode: the same measurement runs against a worktree of that commit
(created under outputs/benchmarks/worktrees/), alternating with this tree ``--rounds`` times, and
the table gains each model's speed-up as a ratio of medians measured in the same run.

Each model runs in its own subprocess (so peak RSS is its own); the FLOP floor is
3 x forward FLOPs (forward + backward) over this machine's measured float32 matmul rate.
``--precisions 32 bf16`` adds a row per model trained under bfloat16 autocast (what
``trainer.precision=bf16-mixed`` does on a CPU; fast where the CPU has AMX or AVX512-BF16).
``auto`` is what each tree's training command does by default (``trainer.precision: auto``: bf16
where the CPU has it natively; a tree without that setting, such as the A/B baseline a431c7a,
trains in float32), so ``--precisions auto --baseline a431c7a`` compares the two defaults. Prints a
table and writes outputs/benchmarks/train_throughput.json. ``--compile`` adds a row per model and
precision with the network's features under ``torch.compile`` (what ``module.compile_features=true``
does in training), with its compile time (the first step). Medians over the timed steps; the
machine is shared, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
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
                precision: str = "32", compiled: bool = False, layout: str = "ntu25") -> dict:
    import torch
    import torch.nn.functional as F

    from last_lite.models.profile import profile_model
    from last_lite.models.registry import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    num_classes = 10 if layout == "ucla20" else 60
    model = create_model(name, num_classes=num_classes, layout=layout)
    flops = profile_model(model, frames, persons).flops
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, frames, model.layout.num_joints, persons)
    y = torch.randint(0, num_classes, (batch,))
    features = torch.compile(model.forward_features) if compiled else model.forward_features
    resolved = default_precision() if precision == "auto" else precision
    times, first_step_s = [], None
    for step in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolved == "bf16"):
            loss = F.cross_entropy(model.forward_head(features(x)["pooled"]), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 0:
            first_step_s = time.perf_counter() - start
        if step >= 2:  # the first steps warm up allocators and kernels (and compile)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"model": name, "precision": precision, "resolved_precision": resolved, "compiled": compiled,
            "first_step_s": first_step_s,
            "samples_per_s": batch / step_s, "step_ms": 1000 * step_s,
            "forward_gflops_per_sample": flops / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def default_precision() -> str:
    """``bf16`` or ``32``: what ``trainer.precision: auto`` picks on this CPU in the imported tree
    (``32`` for a tree older than that setting)."""
    try:
        from last_lite.training.precision import cpu_has_native_bf16
    except ImportError:
        return "32"
    return "bf16" if cpu_has_native_bf16() else "32"


def worktree(commit: str) -> Path:
    """A detached worktree of ``commit`` (reused when it exists)."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = ROOT / "outputs" / "benchmarks" / "worktrees" / sha[:12]
    if not (path / "last_lite").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT,
                       capture_output=True, check=True)
    return path


def run_one(code_root: Path, name: str, precision: str, compiled: bool, args) -> dict:
    """One measurement in a fresh subprocess importing ``last_lite`` from ``code_root``."""
    out = subprocess.run([sys.executable, __file__, "--one", name, "--code-root", str(code_root),
                          "--batch", str(args.batch), "--threads", str(args.threads),
                          "--steps", str(args.steps), "--frames", str(args.frames),
                          "--persons", str(args.persons), "--layout", args.layout,
                          "--precisions", precision, *(["--compile"] if compiled else [])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--layout", default="ntu25", help="ntu25 (NTU shape) or ucla20 (NW-UCLA)")
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=["32", "bf16", "auto"])
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--baseline", help="A/B: also time this git commit, alternating with this tree")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (medians over them)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.code_root:
            sys.path.insert(0, args.code_root)
        print(json.dumps(measure_one(args.one, args.batch, args.threads, args.steps, args.frames,
                                     args.persons, args.precisions[0], args.compile, args.layout)))
        return

    import platform

    rate = matmul_gflops(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = worktree(args.baseline)
    rounds = args.rounds if args.baseline else 1
    compile_modes = [False, True] if args.compile else [False]
    configs = [(m, p, c) for m in args.models for p in args.precisions for c in compile_modes]
    samples: dict[tuple, list[dict]] = {}
    for _ in range(rounds):
        for config in configs:
            for tree, code_root in trees.items():  # alternate, so drift hits both alike
                samples.setdefault((tree, *config), []).append(run_one(code_root, *config, args))

    rows = []
    for (tree, name, precision, compiled), runs in samples.items():
        row = dict(runs[0], tree=tree, rounds=len(runs),
                   samples_per_s=statistics.median(r["samples_per_s"] for r in runs),
                   step_ms=statistics.median(r["step_ms"] for r in runs),
                   peak_rss_mb=max(r["peak_rss_mb"] for r in runs))
        floor_s = 3 * row["forward_gflops_per_sample"] / rate  # seconds per sample at peak matmul rate
        row["flop_floor_samples_per_s"] = 1 / floor_s
        row["fraction_of_floor"] = row["samples_per_s"] / row["flop_floor_samples_per_s"]
        rows.append(row)
    if args.baseline:
        base = {(r["model"], r["precision"], r["compiled"]): r["samples_per_s"]
                for r in rows if r["tree"] == "baseline"}
        for r in rows:
            r["speedup_vs_baseline"] = r["samples_per_s"] / base[(r["model"], r["precision"], r["compiled"])]

    print(f"CPU: {cpu}; training step, batch {args.batch}, T={args.frames}, layout {args.layout}, "
          f"M={args.persons}, {args.threads} threads; matmul {rate:.0f} GFLOP/s"
          + (f"; baseline {args.baseline}, medians of {rounds} alternating rounds" if args.baseline else ""))
    print(f"{'model':<18}{'tree':>9}{'prec':>10}{'compiled':>9}{'samples/s':>10}{'ms/step':>10}"
          f"{'floor s/s':>11}{'of floor':>9}{'peak MB':>9}{'1st step s':>11}"
          + (f"{'speed-up':>9}" if args.baseline else ""))
    for r in rows:
        prec = r["precision"] if r["precision"] == r["resolved_precision"] else \
            f"{r['precision']}:{r['resolved_precision']}"
        print(f"{r['model']:<18}{r['tree']:>9}{prec:>10}{'yes' if r['compiled'] else 'no':>9}"
              f"{r['samples_per_s']:>10.1f}{r['step_ms']:>10.0f}{r['flop_floor_samples_per_s']:>11.1f}"
              f"{r['fraction_of_floor']:>9.0%}{r['peak_rss_mb']:>9.0f}{r['first_step_s']:>11.1f}"
              + (f"{r['speedup_vs_baseline']:>8.2f}x" if args.baseline else ""))
    from last_lite.io import atomic_write_json

    result = {"cpu": cpu, "batch": args.batch, "threads": args.threads, "frames": args.frames,
              "persons": args.persons, "layout": args.layout, "baseline": args.baseline,
              "matmul_gflops": rate, "load_average": list(os.getloadavg()), "rows": rows}
    path = atomic_write_json(ROOT / "outputs" / "benchmarks" / "train_throughput.json", result)
    print(f"written {path}")


if __name__ == "__main__":
    main()
