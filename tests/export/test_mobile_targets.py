"""Mobile and Apple targets (issue 17): ``backend=ort`` (ORT mobile format), ``backend=tflite``
(LiteRT FP32 and full-integer INT8) and ``backend=coreml`` (mlprogram spec) on a briefly trained
synthetic model; parity on real (synthetic test-split) clips; the runtime running ``.tflite`` and
``.ort`` files as it runs ``.onnx``; a missing extra stops the export before any work."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_run import CONF, one_thread_env, train_tiny

SYNTH = dict(num_classes=4, train_per_class=12, test_per_class=6)
CLIP = 24

HAS_LITERT = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert"))
HAS_COREML = importlib.util.find_spec("coremltools") is not None
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="the [tflite] extra is not installed "
                                                         "(pip install -e '.[tflite]')")
needs_coreml = pytest.mark.skipif(not HAS_COREML, reason="the [coreml] extra is not installed "
                                                         "(pip install -e '.[coreml]')")


_env = one_thread_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """last_lite_nano trained for a few short epochs on a small synthetic set."""
    run = train_tiny(tmp_path_factory.mktemp("run"), SYNTH, CLIP, epochs=4)
    assert run["ckpt"].is_file()
    return run


def _export(trained, backend: str, out_dir: Path, *extra: str) -> dict:
    from hydra import compose, initialize_config_dir

    from last_lite.export.__main__ import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="export", overrides=[
            f"ckpt={trained['ckpt']}", f"backend={backend}", f"out_dir={out_dir}",
            "latency.repeats=3", "latency.warmup=1", "threads=1", *extra])
    return run(cfg)


def _raw_test_samples(monkeypatch):
    """The synthetic test recordings before pre-normalisation (what a sensor gives)."""
    from last_lite.data.sources import synthetic

    monkeypatch.setattr(synthetic, "pre_normalize_3d", lambda x, layout: np.asarray(x, np.float32))
    return [(name, x) for name, x, _, _, part in synthetic.SyntheticSource(**SYNTH).samples() if part == "test"]


# ------------------------------------------------------------------------------------------------
# ORT mobile format
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_export(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort")
    return out, _export(trained, "ort", out, "backend.calibration.samples=32")


def test_ort_mobile_files_match_their_onnx_sources(ort_export):
    out, record = ort_export
    for name in ("model.ort", "model_int8.ort", "required_operators.config", "report.json", "metrics.json"):
        assert (out / name).is_file(), name
    config = (out / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "Conv" in config
    info = record["ort_mobile"]
    assert info["files"]["ort_fp32"]["max_abs_diff_vs_onnx"] <= 1e-4
    assert info["files"]["ort_int8"]["max_abs_diff_vs_onnx"] <= 1e-4
    assert record["parity"]["passed"] and not record["failures"]
    ev = record["evaluation"]
    assert set(ev["models"]) == {"fp32", "int8", "ort_fp32", "ort_int8"}
    assert ev["models"]["ort_fp32"]["top1"] == ev["models"]["fp32"]["top1"]
    assert ev["agreement"]["ort_fp32"] == 1.0
    assert (out / "model.ort").read_bytes()[4:8] == b"ORTM"


def test_runtime_runs_ort_files_with_their_metadata_and_hash(ort_export, tmp_path, monkeypatch):
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.inputs import ModelFileError

    out, _ = ort_export
    preds = json.loads((out / "predictions.json").read_text())
    expected = dict(zip(preds["sample_names"], preds["predictions"]["ort_fp32"]))
    rec = ActionRecognizer(out / "model.ort", threads=1)
    assert rec.integrity_checked is True and rec.info.clip_len == CLIP
    for name, x in _raw_test_samples(monkeypatch)[:8]:
        assert rec.predict_clip(x).class_index == expected[name], name
    damaged = tmp_path / "damaged.ort"
    data = bytearray((out / "model.ort").read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged"):
        ActionRecognizer(damaged)


# ------------------------------------------------------------------------------------------------
# TFLite (LiteRT)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tflite_export(trained, tmp_path_factory):
    if not HAS_LITERT:
        pytest.skip("the [tflite] extra is not installed (pip install -e '.[tflite]')")
    out = tmp_path_factory.mktemp("tflite")
    return out, _export(trained, "tflite", out, "backend.calibration.samples=32")


@needs_litert
def test_tflite_fp32_matches_pytorch_and_int8_is_full_integer(tflite_export):
    out, record = tflite_export
    info = record["tflite"]
    par = info["fp32"]["parity_vs_pytorch"]
    assert par["split"] == "test" and par["samples"] > 0 and par["max_abs_diff"] <= 1e-4
    assert info["int8"]["input_dtype"] == "int8" and info["int8"]["output_dtype"] == "int8"
    assert info["int8"]["calibration_samples"] == 32
    assert info["int8"]["top1_agreement_vs_fp32"] >= 0.75
    ev = record["evaluation"]
    assert set(ev["models"]) == {"fp32", "tflite_fp32", "tflite_int8"}
    assert ev["agreement"]["tflite_fp32"] == 1.0
    assert "tflite_int8" in ev["top1_drop_vs_fp32"]
    assert (out / "model_int8.tflite").stat().st_size < (out / "model.tflite").stat().st_size
    assert {"tflite_fp32", "tflite_int8"} <= set(record["latency"])


@needs_litert
def test_tflite_files_carry_the_metadata_and_their_hash(tflite_export, tmp_path):
    from last_lite.export.onnx import read_metadata
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.inputs import ModelFileError
    from last_lite.runtime.tflite import read_tflite_metadata

    out, _ = tflite_export
    onnx_meta = read_metadata(out / "model.onnx")
    for name in ("model.tflite", "model_int8.tflite"):
        meta = {k: json.loads(v) for k, v in read_tflite_metadata((out / name).read_bytes()).items()}
        assert meta["format"] == "last_lite.tflite/1"
        for key in ("class_names", "layout", "clip_len", "max_persons", "normalization", "input", "model_spec"):
            assert meta[key] == onnx_meta[key], key
        assert meta["integrity"].startswith("last_lite.sha256=")
    damaged = tmp_path / "damaged.tflite"
    data = bytearray((out / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged"):
        ActionRecognizer(damaged)


@needs_litert
@pytest.mark.parametrize("which", ["tflite_fp32", "tflite_int8"])
def test_runtime_runs_tflite_as_it_runs_onnx(tflite_export, which, monkeypatch):
    from last_lite.runtime import ActionRecognizer

    out, _ = tflite_export
    preds = json.loads((out / "predictions.json").read_text())
    expected = dict(zip(preds["sample_names"], preds["predictions"][which]))
    model = out / ("model.tflite" if which == "tflite_fp32" else "model_int8.tflite")
    rec = ActionRecognizer(model, threads=1)
    onnx = ActionRecognizer(out / "model.onnx", threads=1)
    assert rec.integrity_checked is True
    for key in ("class_names", "layout", "clip_len", "max_persons", "in_channels", "prenormalize", "input_name"):
        assert getattr(rec.info, key) == getattr(onnx.info, key), key
    raw = _raw_test_samples(monkeypatch)
    for name, x in raw:
        assert rec.predict_clip(x).class_index == expected[name], name
    if which == "tflite_fp32":
        name, x = raw[0]
        a, b = rec.logits(rec.preprocess(x)), onnx.logits(onnx.preprocess(x))
        assert np.abs(a - b).max() <= 1e-4


@needs_litert
def test_runtime_cli_takes_a_tflite_model(tflite_export, tmp_path):
    out, _ = tflite_export
    x = np.random.default_rng(0).normal(size=(CLIP, 25, 3)).astype(np.float32)
    np.save(tmp_path / "rec.npy", x)
    proc = subprocess.run([sys.executable, "-m", "last_lite.runtime", "--model", str(out / "model_int8.tflite"),
                           "--input", str(tmp_path / "rec.npy"), "--json", "--threads", "1"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[-1]["type"] == "summary" and lines[-1]["predictions"] >= 1
    # the runtime on a .tflite file imports neither torch nor the converter
    check = ("import sys; from last_lite.runtime import ActionRecognizer; "
             f"ActionRecognizer({str(out / 'model_int8.tflite')!r}, threads=1); "
             "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'litert_torch', 'jax')]; "
             "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", check], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# Core ML
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coreml_export(trained, tmp_path_factory):
    if not HAS_COREML:
        pytest.skip("the [coreml] extra is not installed (pip install -e '.[coreml]')")
    out = tmp_path_factory.mktemp("coreml")
    return out, _export(trained, "coreml", out)


@needs_coreml
def test_coreml_spec_has_the_inputs_outputs_and_metadata(coreml_export):
    import coremltools as ct

    from last_lite.export.coreml import decoded_metadata
    from last_lite.export.onnx import read_metadata

    out, record = coreml_export
    onnx_meta = read_metadata(out / "model.onnx")
    for name, fname in (("coreml_fp16", "model.mlpackage"), ("coreml_int8w", "model_int8w.mlpackage")):
        facts = record["coreml"]["models"][name]
        assert facts["inputs"] == {"skeleton": [1, 3, CLIP, 25, 2]}
        assert list(facts["outputs"]) == ["logits"]
        mlmodel = ct.models.MLModel(str(out / fname), skip_model_load=True)
        meta = decoded_metadata(mlmodel)
        assert meta["format"] == "last_lite.coreml/1"
        for key in ("class_names", "layout", "clip_len", "max_persons", "normalization"):
            assert meta[key] == onnx_meta[key], key
        assert record["files"][name]["bytes"] > 0
    assert record["files"]["coreml_int8w"]["bytes"] < record["files"]["coreml_fp16"]["bytes"]
    ops = record["coreml"]["models"]["coreml_int8w"]["ops"]
    assert any("dequantize" in op or "constexpr" in op for op in ops), ops


@needs_coreml
def test_coreml_prediction(coreml_export):
    from last_lite.export.coreml import can_predict

    if not can_predict():
        pytest.skip("Core ML predicts on macOS only")
    _, record = coreml_export  # pragma: no cover - macOS
    assert record["evaluation"]["agreement"]["coreml_fp16"] >= 0.9


# ------------------------------------------------------------------------------------------------
# a missing extra
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,module,extra", [("tflite", "litert_torch", "tflite"),
                                                  ("coreml", "coremltools", "coreml")])
def test_missing_extra_stops_before_any_work(trained, tmp_path, monkeypatch, backend, module, extra):
    from last_lite.export.__main__ import run
    from last_lite.export.backends import backend_for

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="export", overrides=[f"ckpt={trained['ckpt']}", f"backend={backend}",
                                                       f"out_dir={tmp_path / 'out'}"])
    assert backend_for(cfg).name == backend
    with pytest.raises(SystemExit, match=rf"pip install -e '\.\[{extra}\]'.*Nothing was written"):
        run(cfg)
    assert not (tmp_path / "out").exists()
