"""Export backends on a briefly trained synthetic model: FP32 parity, INT8 agreement, the TensorRT
clear-error path, and the runtime agreeing with the exporter on the same clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_run import CONF, one_thread_env, train_tiny

SYNTH = dict(num_classes=6, train_per_class=16, test_per_class=10)
CLIP = 32


_env = one_thread_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """last_lite_nano trained for a few short epochs on a small synthetic set."""
    run = train_tiny(tmp_path_factory.mktemp("run"), SYNTH, CLIP, epochs=8)
    assert run["ckpt"].is_file()
    return run


def _export_cfg(trained, backend: str, out_dir: Path, *extra: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="export", overrides=[
            f"ckpt={trained['ckpt']}", f"backend={backend}", f"out_dir={out_dir}",
            "latency.repeats=5", "latency.warmup=1", "threads=1", *extra])


@pytest.fixture(scope="module")
def fp32_export(trained, tmp_path_factory):
    """The CLI (a subprocess: the real Hydra app), default out_dir under the run folder."""
    cwd = tmp_path_factory.mktemp("cwd")
    proc = subprocess.run([sys.executable, "-m", "last_lite.export", f"ckpt={trained['ckpt']}",
                           "backend=onnx", "latency.repeats=5", "threads=1"], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(cwd.iterdir()) == []  # Hydra left nothing in the working directory
    out = trained["run_dir"] / "export" / "onnx"
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def int8_export(trained, tmp_path_factory):
    from last_lite.export.__main__ import run

    out = tmp_path_factory.mktemp("int8")
    record = run(_export_cfg(trained, "onnx_int8", out, "backend.calibration.samples=64"))
    return out, record


def test_fp32_export_matches_pytorch_and_carries_metadata(trained, fp32_export):
    import onnx

    from last_lite.export.onnx import read_metadata

    out, report = fp32_export
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "MatMul" in ops
    inp = model.graph.input[0].type.tensor_type.shape.dim
    assert inp[0].dim_param == "batch" and [d.dim_value for d in inp[1:]] == [3, CLIP, 25, 2]
    meta = read_metadata(model)
    from last_lite.data.sources.synthetic import CLASS_NAMES

    assert meta["class_names"] == list(CLASS_NAMES[:SYNTH["num_classes"]])
    assert meta["clip_len"] == CLIP and meta["max_persons"] == 2 and meta["layout"] == "ntu25"
    assert meta["normalization"]["prenormalize"] == "3d" and meta["normalization"]["mode"] == "resize"
    assert report["schema"] == "last_lite.metrics/1" and report["command"] == "export"
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4
    assert report["parity"]["split"] == "test" and report["parity"]["samples"] > 0
    assert report["export"]["batchnorm_nodes"] == 0 and report["export"]["batchnorm_folded"] > 0
    ev = report["evaluation"]
    assert ev["samples"] == SYNTH["num_classes"] * SYNTH["test_per_class"]
    # the ORT FP32 top-1 on the test split equals the trainer's test top-1 (same clips, same model)
    assert ev["models"]["fp32"]["top1"] == pytest.approx(trained["record"]["top1"], abs=0.02)
    for name in ("report.md", "metrics.json", "predictions.json"):
        assert (out / name).is_file()


def test_int8_export_agrees_with_fp32(int8_export):
    out, record = int8_export
    ev = record["evaluation"]
    assert ev["samples"] == SYNTH["num_classes"] * SYNTH["test_per_class"]
    assert ev["int8_agreement"] >= 0.95
    assert ev["top1_drop"] == pytest.approx(ev["models"]["fp32"]["top1"] - ev["models"]["int8"]["top1"])
    q = record["quantization"]
    assert q["format"] == "QDQ" and q["per_channel"] and q["calibration_samples"] == 64
    assert q["int8_ops_run"].get("QLinearConv", 0) > 0          # convolutions run in INT8
    assert q["float_ops_run"].get("MatMul", 0) > 0               # graph products stay float MatMuls
    assert record["files"]["int8"]["bytes"] < record["files"]["fp32"]["bytes"]
    assert record["files"]["int8"]["bytes_per_param"] < record["files"]["fp32"]["bytes_per_param"]
    assert record["latency"]["int8"]["p50_ms"] > 0 and record["deployable"] == "int8"
    report = json.loads((out / "report.json").read_text())
    assert report["top1"] == ev["models"]["int8"]["top1"]
    assert "INT8" in (out / "report.md").read_text()


def test_compacting_the_int8_file_shrinks_it_and_changes_no_output(int8_export, tmp_path):
    import onnx
    import onnxruntime as ort

    from last_lite.export.quantize import compact_model

    out, _ = int8_export
    shipped = onnx.load(str(out / "model_int8.onnx"))   # compacted by the export (the default)
    assert not shipped.graph.value_info and not any(n.name for n in shipped.graph.node)
    names = [t.name for t in shipped.graph.initializer]
    assert len(set(names)) == len(names) and max(map(len, names)) <= 4
    data = shipped.graph.initializer
    assert len({(t.data_type, tuple(t.dims), t.SerializeToString().replace(t.name.encode(), b""))
                for t in data}) == len(data)          # no initializer stored twice

    loose = onnx.load(str(out / "model_int8.onnx"))
    for i, node in enumerate(loose.graph.node):          # long names, as the quantizer writes them
        node.name = f"a_rather_long_node_name_{i}"
    before = len(loose.SerializeToString())
    compact_model(loose)
    assert len(loose.SerializeToString()) < before
    reference = ort.InferenceSession(str(out / "model_int8.onnx"))
    x = np.random.default_rng(0).standard_normal((3, *reference.get_inputs()[0].shape[1:])).astype(np.float32)
    compacted = ort.InferenceSession(loose.SerializeToString())
    np.testing.assert_array_equal(compacted.run(None, {"skeleton": x})[0], reference.run(None, {"skeleton": x})[0])
    assert [i.name for i in loose.graph.input] == ["skeleton"]


def test_calibrating_in_chunks_gives_the_same_minmax_model(fp32_export, tmp_path):
    import onnx

    from last_lite.export.quantize import calibration_chunk, quantize_int8

    assert [calibration_chunk(n, 32) for n in (256, 64, 24, 17, 1)] == [32, 32, 24, 17, 1]
    out, _ = fp32_export
    shape = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    samples = np.random.default_rng(0).standard_normal((24, *[d.dim_value for d in shape[1:]]))
    calibration = [samples.astype(np.float32)]
    quantize_int8(out / "model.onnx", tmp_path / "whole.onnx", calibration, chunk_samples=24)
    quantize_int8(out / "model.onnx", tmp_path / "chunks.onnx", calibration, chunk_samples=5)  # chunks of 4
    whole, chunks = onnx.load(str(tmp_path / "whole.onnx")), onnx.load(str(tmp_path / "chunks.onnx"))
    assert {t.name: t.SerializeToString() for t in whole.graph.initializer} == \
        {t.name: t.SerializeToString() for t in chunks.graph.initializer}


@pytest.mark.parametrize("method", ["Percentile"])
def test_int8_calibration_method_is_configurable(trained, tmp_path, method):
    from last_lite.export.__main__ import run

    record = run(_export_cfg(trained, "onnx_int8", tmp_path, f"backend.calibration.method={method}",
                             "backend.calibration.samples=16", "evaluate=false"))
    assert record["quantization"]["method"] == method
    assert (tmp_path / "model_int8.onnx").is_file()


def test_tensorrt_without_tensorrt_or_gpu_fails_clearly_and_writes_nothing(trained, tmp_path):
    from last_lite.export.tensorrt import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
        pytest.skip("TensorRT and a GPU are available here")
    except TensorRTUnavailable:
        pass
    before = sorted(p.relative_to(trained["run_dir"]) for p in trained["run_dir"].rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "last_lite.export", f"ckpt={trained['ckpt']}",
                           "backend=tensorrt"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    message = proc.stderr + proc.stdout
    assert "pip install 'last_lite[tensorrt]'" in message and "NVIDIA GPU" in message
    assert "Nothing was written" in message
    after = sorted(p.relative_to(trained["run_dir"]) for p in trained["run_dir"].rglob("*"))
    assert after == before and not (trained["run_dir"] / "export" / "tensorrt").exists()
    assert list(tmp_path.iterdir()) == []


def _conv_gemm_model(path: Path) -> Path:
    """skeleton (N, 3, 8, 5, 2) -> Conv with bias -> Relu -> mean -> Gemm with bias -> logits (N, 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(np.array([0, 3, 8, 10], np.int64), "shape"),
            numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype(np.float32), "cw"),
            numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "cb"),
            numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "gw"),
            numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "gb")]
    nodes = [helper.make_node("Reshape", ["skeleton", "shape"], ["flat"]),
             helper.make_node("Conv", ["flat", "cw", "cb"], ["conv"]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["feat"]),
             helper.make_node("Gemm", ["feat", "gw", "gb"], ["logits"])]
    graph = helper.make_graph(nodes, "conv_gemm",
                              [helper.make_tensor_value_info("skeleton", TensorProto.FLOAT, ["batch", 3, 8, 5, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_tensorrt_int8_model_has_no_int32_dequantize_input(tmp_path):
    """TensorRT 10's ONNX parser takes only INT8/FP8/INT4 DequantizeLinear inputs; ORT's quantizer
    stores Conv/Gemm biases as INT32 ones unless told not to, which the backend forces."""
    from types import SimpleNamespace

    import onnx
    from omegaconf import OmegaConf

    from last_lite.export.backends.tensorrt import quantization_for_tensorrt
    from last_lite.export.common import quantize

    backend = OmegaConf.to_container(OmegaConf.load(CONF / "backend" / "tensorrt.yaml"), resolve=True)
    qcfg, calib = backend["quantization"], {**backend["calibration"], "samples": 8}
    qcfg["extra_options"].pop("QuantizeBias", None)  # a user config without it: the backend forces it anyway
    x = np.random.default_rng(1).normal(size=(8, 3, 8, 5, 2)).astype(np.float32)
    dm = SimpleNamespace(calibration_dataloader=lambda samples, seed: [(x, None)])
    fp32 = _conv_gemm_model(tmp_path / "model.onnx")

    def dequantize_input_types(path: Path) -> list[int]:
        model = onnx.load(str(path))
        types = {t.name: t.data_type for t in model.graph.initializer}
        return [types[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                and n.input[0] in types]

    # the control: ORT's default gives the INT32 biases TensorRT refuses
    quantize(fp32, tmp_path / "default.onnx", dm, qcfg, calib)
    assert onnx.TensorProto.INT32 in dequantize_input_types(tmp_path / "default.onnx")
    quantize(fp32, tmp_path / "trt.onnx", dm, quantization_for_tensorrt(qcfg), calib)
    types = dequantize_input_types(tmp_path / "trt.onnx")
    assert types and set(types) == {onnx.TensorProto.INT8}  # the weights, quantized; no INT32 anywhere


@pytest.mark.parametrize("version", ["11.0.0", "9.3.0.1", "unknown"])
def test_tensorrt_of_another_major_version_is_refused_before_anything_is_written(monkeypatch, version):
    import types

    from last_lite.export.tensorrt import TensorRTUnavailable, require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    with pytest.raises(TensorRTUnavailable, match=rf"TensorRT {version} is installed here.*TensorRT 10"):
        require_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3.9"))
    try:  # TensorRT 10 passes the version check (then needs a GPU)
        require_tensorrt()
    except TensorRTUnavailable as exc:
        assert "is installed here" not in str(exc) and "NVIDIA GPU" in str(exc)


def test_the_engine_runner_refuses_a_shape_outside_its_profile():
    """TensorRT's set_input_shape answers False for such a shape; running on used the old one."""
    from types import SimpleNamespace

    from last_lite.export.tensorrt import EngineRunner

    runner = EngineRunner.__new__(EngineRunner)  # no TensorRT here: the context answers as TensorRT 10's
    runner.context = SimpleNamespace(set_input_shape=lambda name, shape: shape[1:] == (3, 32, 25, 2))
    runner.inputs, runner.min_shape, runner.max_shape = ["skeleton"], (1, 3, 32, 25, 2), (8, 3, 32, 25, 2)
    runner.max_batch = 8
    with pytest.raises(ValueError, match=r"refuses input shape \(2, 3, 16, 25, 2\).*takes \(1, 3, 32, 25, 2\) "
                                         r"to \(8, 3, 32, 25, 2\)"):
        runner.run_batch(np.zeros((2, 3, 16, 25, 2), np.float32))


def _raw_test_samples(trained, monkeypatch):
    """The synthetic test recordings BEFORE pre-normalisation (what a sensor would give)."""
    from last_lite.data.sources import synthetic

    monkeypatch.setattr(synthetic, "pre_normalize_3d", lambda x, layout: np.asarray(x, np.float32))
    return [(name, x, label) for name, x, label, _, part in synthetic.SyntheticSource(**SYNTH).samples()
            if part == "test"]


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_runtime_predicts_what_the_exporter_predicted(trained, fp32_export, int8_export, which,
                                                      monkeypatch):
    from last_lite.runtime import ActionRecognizer

    out, _ = fp32_export if which == "fp32" else int8_export
    preds = json.loads((out / "predictions.json").read_text())
    expected = dict(zip(preds["sample_names"], preds["predictions"][which]))
    model = out / ("model.onnx" if which == "fp32" else "model_int8.onnx")
    rec = ActionRecognizer(model, threads=1)
    raw = _raw_test_samples(trained, monkeypatch)
    assert sorted(n for n, _, _ in raw) == sorted(expected)
    for name, x, _ in raw:
        # the whole recording: exactly the test loader's clip
        assert rec.predict_clip(x).class_index == expected[name], name
    # streaming with a window holding the whole recording ends on the same prediction
    name, x, _ = max(raw, key=lambda r: r[1].shape[1])
    stream = ActionRecognizer(model, window=x.shape[1], stride=x.shape[1], threads=1)
    got = list(stream.stream(x[:, t] for t in range(x.shape[1])))
    assert got and got[-1].class_index == expected[name] and got[-1].frame_index == x.shape[1] - 1
