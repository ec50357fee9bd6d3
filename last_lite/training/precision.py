"""``precision: auto``: mixed precision only where the hardware does it natively.

On a CPU, bfloat16 autocast pays only with native bf16 arithmetic (AMX or AVX512-BF16;
docs/results.md, "Training throughput", round four); elsewhere it is emulated and slower,
so ``auto`` trains in float32 there. A resumed run keeps the precision its checkpoint was trained
in, so a run split across machine kinds still resumes exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def training_device(accelerator: str) -> str:
    """``cpu`` or ``cuda``: where a trainer with this ``accelerator`` setting runs."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def native_bf16(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def checkpoint_precisions(ckpt_path: str | Path | None) -> dict:
    """The precisions a checkpoint was trained in (``{}`` without a checkpoint file). Checkpoints
    written before ``auto`` existed do not record the trainer's: it was float32 then."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return {}
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    recorded = {"trainer": checkpoint.get("trainer_precision", "32-true")}
    if "teacher_precision" in hyper_parameters:
        recorded["teacher"] = str(hyper_parameters["teacher_precision"])
    return recorded


def resolve_trainer_precision(requested, accelerator: str, resumed: dict) -> str:
    """Lightning's precision for ``trainer.precision``: as given, or for ``auto`` the resumed
    checkpoint's, else ``bf16-mixed`` where the device has native bf16 and ``32-true`` elsewhere."""
    if str(requested) != "auto":
        return str(requested)
    if "trainer" in resumed:
        return resumed["trainer"]
    return "bf16-mixed" if native_bf16(training_device(accelerator)) else "32-true"


def resolve_teacher_precision(requested, accelerator: str, resumed: dict) -> str:
    """The frozen teacher's forward precision (``bf16`` or ``32``), resolved like the trainer's."""
    if str(requested) != "auto":
        return str(requested)
    if "teacher" in resumed:
        return resumed["teacher"]
    return "bf16" if native_bf16(training_device(accelerator)) else "32"
