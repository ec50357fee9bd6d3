"""``precision: auto``: bf16 autocast only where the hardware has it; a resume keeps its precision."""

import pytest

from conftest import TINY_DATA, read_metrics, run_command
from last_lite.training.checkpoints import load_checkpoint
from last_lite.training.precision import (
    checkpoint_precisions,
    cpu_flags,
    cpu_has_native_bf16,
    resolve_teacher_precision,
    resolve_trainer_precision,
)

AVX2_FLAGS = "fpu vme sse sse2 avx avx2 fma"
AMX_FLAGS = AVX2_FLAGS + " avx512f avx512bw avx512_bf16 amx_bf16 amx_tile"


@pytest.mark.parametrize("flags, native", [(AVX2_FLAGS, False), (AVX2_FLAGS + " avx512f avx512bw", False),
                                           (AVX2_FLAGS + " avx512_bf16", True), (AMX_FLAGS, True)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16(cpu_flags(cpuinfo)) is native
    # AVX-512 without its BF16 extension emulates bf16 (slower than float32): not native
    assert cpu_flags(tmp_path / "absent") == set()


def test_an_explicit_precision_is_kept_and_auto_follows_the_resumed_checkpoint():
    assert resolve_trainer_precision("32-true", "cpu", {"trainer": "bf16-mixed"}) == "32-true"
    assert resolve_trainer_precision("bf16-mixed", "cpu", {}) == "bf16-mixed"
    assert resolve_trainer_precision("auto", "cpu", {"trainer": "32-true"}) == "32-true"
    assert resolve_teacher_precision("auto", "cpu", {"teacher": "bf16"}) == "bf16"
    assert resolve_teacher_precision(32, "cpu", {}) == "32"
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert resolve_trainer_precision("auto", "cpu", {}) == expected
    assert checkpoint_precisions(None) == {}


def test_a_run_records_its_precision_and_a_resume_keeps_the_checkpoints(tmp_path):
    common = ["model=last_lite_nano", "test_after_fit=false", "callbacks.model_checkpoint.monitor=null",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='e{epoch}'",
              *TINY_DATA]
    fresh, pinned, resumed = tmp_path / "fresh", tmp_path / "pinned", tmp_path / "resumed"
    run_command("train", [*common, "trainer.max_epochs=1"], fresh)
    chosen = resolve_trainer_precision("auto", "cpu", {})
    assert read_metrics(fresh)["precision"] == chosen
    assert load_checkpoint(fresh / "checkpoints" / "last.ckpt")["trainer_precision"] == chosen
    # A run begun in the other precision resumes in it, whatever this machine would pick.
    other = "32-true" if chosen == "bf16-mixed" else "bf16-mixed"
    run_command("train", [*common, "trainer.max_epochs=1", f"trainer.precision={other}"], pinned)
    run_command("train", [*common, "trainer.max_epochs=2", f"ckpt_path={pinned / 'checkpoints' / 'e0.ckpt'}"],
                resumed)
    assert read_metrics(resumed)["precision"] == other
    assert checkpoint_precisions(resumed / "checkpoints" / "last.ckpt") == {"trainer": other}
