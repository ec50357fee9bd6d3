"""The frozen teacher in float32 versus bfloat16 autocast (Path B's ``teacher.precision``).

    python benchmarks/teacher_precision.py [--model last_e_v3_base] [--threads 1] [--repeats 8]
        [--compile] [--zoo nw_ucla/last_e_v3_base --data-config <a run's config.yaml>]

Times the teacher's no-grad forward (stage features + logits) at the NW-UCLA recipe's shape
(batch 16, T=52, V=20, M=1), alternating the two precisions so both see the same machine load,
and reports medians and their ratio; ``--compile`` adds both under ``torch.compile`` (distill's
``teacher.compile=true``), with their compile times. With ``--zoo`` and ``--data-config`` it also runs the zoo
teacher over that data's whole test split in both precisions: top-1 of each and how often their
predictions agree. Prints a table and writes outputs/benchmarks/teacher_precision.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def teacher_forward(model, x: torch.Tensor, bf16: bool, features=None) -> torch.Tensor:
    """``features``: the callable standing in for ``model.forward_features`` (a compiled one)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = (features or model.forward_features)(x)
        return model.forward_head(out["pooled"]).float()


def time_variants(model, x: torch.Tensor, repeats: int, compile_too: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of each variant, alternating them round by round; and each compiled variant's
    first call (its compile time), in seconds."""
    variants = {"fp32": (False, None), "bf16": (True, None)}
    compile_s = {}
    if compile_too:  # as distill's teacher.compile=true: torch.compile of forward_features
        for name, bf16 in (("fp32 compiled", False), ("bf16 compiled", True)):
            compiled = torch.compile(model.forward_features)
            start = time.perf_counter()
            teacher_forward(model, x, bf16, compiled)
            compile_s[name] = time.perf_counter() - start
            variants[name] = (bf16, compiled)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(repeats + 1):
        for name, (bf16, features) in variants.items():
            start = time.perf_counter()
            teacher_forward(model, x, bf16, features)
            if i:  # the first round warms up kernels
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}, compile_s


def test_split_agreement(zoo_name: str, data_config: Path) -> dict[str, float]:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from last_lite.zoo import load_zoo_model

    model, _ = load_zoo_model(zoo_name)
    model.eval()
    datamodule = instantiate(OmegaConf.load(data_config).data)
    datamodule.setup("test")
    n = correct32 = correct16 = agree = 0
    for batch in datamodule.test_dataloader():
        x, y = batch[0], batch[1]
        p32 = teacher_forward(model, x, bf16=False).argmax(1)
        p16 = teacher_forward(model, x, bf16=True).argmax(1)
        n += len(y)
        correct32 += (p32 == y).sum().item()
        correct16 += (p16 == y).sum().item()
        agree += (p32 == p16).sum().item()
    return {"clips": n, "top1_fp32": correct32 / n, "top1_bf16": correct16 / n, "agreement": agree / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="last_e_v3_base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time the compiled forward")
    parser.add_argument("--zoo", help="a zoo model name, e.g. nw_ucla/last_e_v3_base")
    parser.add_argument("--data-config", type=Path, help="a run's config.yaml (its `data` section)")
    args = parser.parse_args()
    if bool(args.zoo) != bool(args.data_config):
        parser.error("--zoo and --data-config go together")

    from last_lite.io import atomic_write_json
    from last_lite.models.registry import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, layout="ucla20").eval()
    x = torch.randn(16, 3, 52, 20, 1)
    ms, compile_s = time_variants(model, x, args.repeats, args.compile)
    result = {"model": args.model, "threads": args.threads, "batch": 16, "shape": list(x.shape),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "load_average": list(os.getloadavg()), "median_ms": ms,
              "speedup": ms["fp32"] / ms["bf16"]}
    if compile_s:
        result.update(compile_s=compile_s, compiled_speedup={
            "fp32": ms["fp32"] / ms["fp32 compiled"], "bf16": ms["bf16"] / ms["bf16 compiled"]})
    print(f"{args.model} teacher forward, batch 16, T=52, V=20, M=1, {args.threads} thread(s), "
          f"load {result['load_average'][0]:.1f}")
    print(f"{'variant':<15}{'median ms':>10}{'compile s':>11}")
    for name, value in ms.items():
        compiled = f"{compile_s[name]:>11.1f}" if name in compile_s else f"{'-':>11}"
        print(f"{name:<15}{value:>10.1f}{compiled}")
    print(f"bf16 speed-up: {result['speedup']:.2f}x")
    for precision, ratio in result.get("compiled_speedup", {}).items():
        print(f"compiled speed-up, {precision}: {ratio:.2f}x")
    if args.zoo:
        result["test_split"] = test_split_agreement(args.zoo, args.data_config)
        t = result["test_split"]
        print(f"{args.zoo} on {t['clips']} test clips: top-1 fp32 {t['top1_fp32']:.2%}, bf16 "
              f"{t['top1_bf16']:.2%}, predictions agree on {t['agreement']:.2%}")
    path = atomic_write_json(ROOT / "outputs" / "benchmarks" / "teacher_precision.json", result)
    print(f"written {path}")


if __name__ == "__main__":
    main()
