"""One real training epoch of ``experiment=nw_ucla``, end to end (data, steps, validation,
checkpoints), timed for this tree and, with ``--baseline``, a worktree of another commit.

    LAST_LITE_DATA=../shared/data python benchmarks/epoch_time.py \
        [--models last_e_v3_base last_lite_small] [--threads 1] [--baseline a431c7a] [--rounds 1]

An epoch's time is the wall time of a 2-epoch command minus that of a 1-epoch command (so start-up,
data cache and imports cancel); the trees alternate within each round. Prints a table and writes
outputs/benchmarks/epoch_time.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_throughput import worktree  # noqa: E402


def command_seconds(code_root: Path, model: str, epochs: int, threads: int,
                    *extra: str) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "last_lite.train", "experiment=nw_ucla", f"model={model}",
               f"trainer.max_epochs={epochs}", "test_after_fit=false", f"threads={threads}",
               f"hydra.run.dir={run_dir}", *extra]
        env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True, check=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["last_e_v3_base", "last_lite_small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", help="also time this git commit, alternating with this tree")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("LAST_LITE_DATA"):
        sys.exit("set LAST_LITE_DATA to the folder holding nw_ucla/ (e.g. ../shared/data)")
    os.environ["LAST_LITE_DATA"] = str(Path(os.environ["LAST_LITE_DATA"]).resolve())
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = worktree(args.baseline)
    for code_root in trees.values():  # build each tree's data cache outside the timings
        command_seconds(code_root, args.models[0], 1, args.threads, "+trainer.limit_train_batches=1")
    epochs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for model in args.models:
            for tree, code_root in trees.items():
                one = command_seconds(code_root, model, 1, args.threads)
                two = command_seconds(code_root, model, 2, args.threads)
                epochs.setdefault((model, tree), []).append(two - one)
    rows = []
    for (model, tree), times in epochs.items():
        row = {"model": model, "tree": tree, "epoch_s": statistics.median(times), "rounds": len(times)}
        if args.baseline:
            row["speedup_vs_baseline"] = statistics.median(epochs[(model, "baseline")]) / row["epoch_s"]
        rows.append(row)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"CPU: {cpu}; one experiment=nw_ucla epoch (918 clips + 102 validation), {args.threads} "
          f"thread(s)" + (f"; baseline {args.baseline}" if args.baseline else ""))
    print(f"{'model':<18}{'tree':>9}{'epoch s':>9}" + (f"{'speed-up':>10}" if args.baseline else ""))
    for r in rows:
        print(f"{r['model']:<18}{r['tree']:>9}{r['epoch_s']:>9.1f}"
              + (f"{r['speedup_vs_baseline']:>9.2f}x" if args.baseline else ""))
    from last_lite.io import atomic_write_json

    path = atomic_write_json(ROOT / "outputs" / "benchmarks" / "epoch_time.json",
                             {"cpu": cpu, "threads": args.threads, "baseline": args.baseline,
                              "load_average": list(os.getloadavg()), "rows": rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
