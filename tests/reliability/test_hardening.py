"""Hardening, round two (issue 19): what a careful adversarial user broke, one test per point.

1. a run folder's config.yaml is data, not code (export builds only the project's classes);
2. ``trusted`` is parsed strictly (the strings false/no/0 are false);
3. a damaged, truncated or empty ONNX file, or absurd metadata, is refused with the file's name;
4. the runtime's JSON-lines and .npy readers: bad input reported (a line skipped, the stream
   going on), allocations bounded by the model, fuzzed (>= 5,000 cases each);
8. config values checked before any work (in test_config_validation.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from omegaconf import OmegaConf

from reliability_support import REPO, bounded_call, env_for_subprocess

from last_lite.config_checks import ConfigError, parse_bool
from last_lite.runtime import ActionRecognizer
from last_lite.runtime.inputs import (InputError, ModelFileError, frames_from_json_lines,
                                      read_model_bytes, read_npy_recording)
from last_lite.runtime.integrity import KEY, PLACEHOLDER, stamp, verify

CLASSES = ["wave", "sit", "jump"]
CLIP, V, C, M = 16, 25, 3, 2
FUZZ_CASES = int(5000 * float(os.environ.get("LAST_LITE_FUZZ_SCALE", "1")))


class Planted:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------------
# 1. a run folder's config is data, not code
# ------------------------------------------------------------------------------------------------
def _clean_checkpoint(run_dir: Path) -> Path:
    from last_lite.models import create_model

    model = create_model("last_lite_nano", num_classes=4, layout="ntu25")
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_spec": {"name": "last_lite_nano", "num_classes": 4,
                                                    "layout": "ntu25"},
                                     "data_spec": {"class_names": list("abcd"), "layout": "ntu25",
                                                   "clip_len": 16, "max_persons": 2, "in_channels": 3}},
                "epoch": 1}, ckpt)
    return ckpt


@pytest.mark.parametrize("where", ["top", "source", "nested"])
def test_a_planted_target_in_a_run_folders_config_is_refused_before_anything_is_built(tmp_path, where):
    from last_lite.export.common import data_config

    marker = tmp_path / "code-ran"
    evil = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    data = {"_target_": "last_lite.data.datamodule.SkeletonDataModule",
            "source": {"_target_": "last_lite.data.sources.synthetic.SyntheticSource"}}
    if where == "top":
        data = evil
    elif where == "source":
        data["source"] = evil
    else:
        data["train_transform"] = {"extra": [1, {"deep": evil}]}
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({"data": data}))
    with pytest.raises((ConfigError, ValueError), match="builtins.open|_target_"):
        data_config(OmegaConf.create({"data_config": None}), tmp_path)
    assert not marker.exists()


def test_export_refuses_a_config_yaml_planted_beside_a_clean_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    ckpt = _clean_checkpoint(run_dir)
    marker = tmp_path / "code-ran"
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(
        {"data": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}))
    proc = subprocess.run([sys.executable, "-m", "last_lite.export", f"ckpt={ckpt}", "backend=onnx",
                           f"out_dir={tmp_path / 'out'}"], cwd=REPO, env=env_for_subprocess(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "builtins.open" in proc.stderr + proc.stdout
    assert not marker.exists()
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_model_spec_cannot_name_a_callable_merely_imported_into_last_lite_models():
    from last_lite.models.registry import build_model

    with pytest.raises(ValueError, match="outside last_lite.models|not defined in last_lite.models"):
        build_model({"_target_": "last_lite.models.registry.import_module", "name": "os"})
    with pytest.raises(ValueError, match="outside last_lite.models"):
        build_model({"_target_": "builtins.open", "file": "x"})


# ------------------------------------------------------------------------------------------------
# 2. `trusted` parsed strictly
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("true", True), ("yes", True),
                                            ("1", True), (1, True), ("false", False), ("no", False),
                                            ("0", False), (0, False), ("False", False), (" NO ", False)])
def test_parse_bool_reads_true_and_false_words_correctly(value, expected):
    assert parse_bool(value, "x") is expected


@pytest.mark.parametrize("value", ["maybe", "", None, 2, -1, 0.5, [], "tru", "y e s"])
def test_parse_bool_refuses_anything_else(value):
    with pytest.raises(ConfigError, match="must be true or false"):
        parse_bool(value, "x")


@pytest.mark.parametrize("value", ["false", "no", "0", "False", 0, False])
def test_pyskl_false_words_never_open_the_pickle(tmp_path, value):
    from last_lite.data.sources.pyskl import PYSKLSource, UntrustedPickleError

    marker, path = tmp_path / "code-ran", tmp_path / "anno.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"annotations": [], "planted": Planted(marker)}, fh)
    with pytest.raises(UntrustedPickleError):
        PYSKLSource(path, trusted=value)
    cfg = OmegaConf.create({"_target_": "last_lite.data.sources.pyskl.PYSKLSource", "path": str(path),
                            "trusted": value})
    from hydra.utils import instantiate

    with pytest.raises(Exception, match="trusted"):
        instantiate(cfg)
    assert not marker.exists()


@pytest.mark.parametrize("value", ["maybe", "ture", 2, None])
def test_pyskl_refuses_a_trusted_value_that_is_not_a_boolean(tmp_path, value):
    from last_lite.data.sources.pyskl import PYSKLSource

    path = tmp_path / "anno.pkl"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="trusted"):
        PYSKLSource(path, trusted=value)


# ------------------------------------------------------------------------------------------------
# 3. model files
# ------------------------------------------------------------------------------------------------
def make_model(path: Path, meta_override: dict | None = None, integrity: bool = True,
               classes: int = len(CLASSES)) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(C, classes)).astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["skeleton"], ["pooled"], axes=[2, 3, 4], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("skeleton", TensorProto.FLOAT, ["batch", C, CLIP, V, M])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"format": "last_lite.onnx/1", "model": "tiny", "class_names": CLASSES, "layout": "ntu25",
            "clip_len": CLIP, "max_persons": M, "in_channels": C, "coord_dims": 3,
            "normalization": {"prenormalize": "3d", "mode": "resize", "crop_ratio": 0.95,
                              "num_clips": 1, "coord_dims": 3}}
    meta.update(meta_override or {})
    if integrity:
        meta[KEY] = PLACEHOLDER
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    onnx.save(model, str(path))
    if integrity:
        stamp(path)
    return path


def test_a_stamped_model_loads_and_any_flipped_byte_is_refused(tmp_path):
    path = make_model(tmp_path / "m.onnx")
    rec = ActionRecognizer(path)
    assert rec.integrity_checked is True
    data = path.read_bytes()
    weights = data.find(np.random.default_rng(0).normal(size=(C, 3)).astype(np.float32).tobytes()[:8])
    assert weights > 0
    rng = np.random.default_rng(1)
    for start in [weights, weights + 4, 0, len(data) // 2, len(data) - 1]:
        damaged = bytearray(data)
        for i in range(start, min(len(data), start + 200)):
            damaged[i] ^= int(rng.integers(1, 256))
        bad = tmp_path / f"bad{start}.onnx"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ModelFileError, match=str(bad.name)):
            ActionRecognizer(bad)


@pytest.mark.parametrize("cut", [0, 1, 50, 200, -10])
def test_a_truncated_or_empty_model_is_refused_naming_the_file(tmp_path, cut):
    data = make_model(tmp_path / "m.onnx", integrity=False).read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="cut.onnx"):
        ActionRecognizer(bad)


def test_a_missing_folder_or_fifo_model_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        ActionRecognizer(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="not a regular file"):
        ActionRecognizer(tmp_path)
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file"):
        ActionRecognizer(fifo)


@pytest.mark.parametrize("override", [
    {"max_persons": 100_000_000}, {"max_persons": 3}, {"max_persons": "2"}, {"clip_len": 0},
    {"clip_len": 10**9}, {"class_names": 5}, {"class_names": ["a", "b"]}, {"class_names": [1, 2, 3]},
    {"in_channels": 4}, {"layout": "nope"}, {"layout": {"edges": 5}}, {"normalization": 3},
    {"normalization": {"mode": "warp"}}, {"normalization": {"num_clips": 10**6}},
    {"normalization": {"crop_ratio": "x"}}, {"normalization": {"prenormalize": "4d"}},
])
def test_absurd_metadata_is_refused_before_any_allocation(tmp_path, override):
    path = make_model(tmp_path / "m.onnx", override)
    with pytest.raises(ModelFileError, match="m.onnx"):
        ActionRecognizer(path)


def test_an_exported_model_carries_its_sha256(tmp_path):
    from last_lite.export.onnx import build_metadata, export_onnx
    from last_lite.models import create_model

    model = create_model("last_lite_nano", num_classes=4, layout="ntu25").eval()
    meta = build_metadata(model_name="last_lite_nano", class_names=list("abcd"), layout="ntu25",
                          clip_len=16, max_persons=2, in_channels=3, coord_dims=3,
                          normalization={"prenormalize": "3d", "mode": "resize", "crop_ratio": 0.95,
                                         "num_clips": 1, "coord_dims": 3})
    path = tmp_path / "model.onnx"
    export_onnx(model, path, clip_len=16, max_persons=2, metadata=meta)
    assert verify(path.read_bytes(), str(path)) is True
    assert ActionRecognizer(path).integrity_checked is True


def test_the_runtime_cli_gives_one_line_errors(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "last_lite.runtime", *args], cwd=REPO,
                              env=env_for_subprocess(), capture_output=True, text=True, timeout=300)

    for args, expected in [(["--model", str(tmp_path / "nope.onnx"), "--input", "x"], "nope.onnx does not exist"),
                           (["--model", "zoo:nope/none", "--input", "x"], "available: nw_ucla/")]:
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and expected in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    model = make_model(tmp_path / "m.onnx")
    lines = tmp_path / "frames.jsonl"
    good = json.dumps({"persons": [[[0.1 * j, 0.2, 3.0] for j in range(V)]]})
    lines.write_text("\n".join([good] * 10 + ['{"persons": 5}', "7", "[" * 100000, "1" * 5000,
                                              json.dumps({"persons": [None] * 200000})] + [good] * 10) + "\n")
    proc = cli("--model", str(model), "--input", str(lines), "--stride", "4", "--min-frames", "4")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("skipped") == 5
    assert "20 frames" in proc.stdout


# ------------------------------------------------------------------------------------------------
# 4. runtime inputs: every bad frame reported, allocations bounded, streams go on
# ------------------------------------------------------------------------------------------------
def test_bad_json_lines_are_reported_and_skipped_and_the_stream_goes_on():
    good = json.dumps({"persons": [[[1.0, 2.0, 3.0]] * V]})
    bad = ['{"persons": 5}', "42", json.dumps({"persons": [[{"x": 1}] * V]}), "[" * 50000 + "]" * 50000,
           "9" * 10000, json.dumps({"persons": [None] * 200_000}), "\xff\xfe", '{"persons": [[[1e400, 0, 0]]]}',
           json.dumps({"persons": [[[1e30, 0, 0]] * V]}), '{"persons": [[true]]}', "not json", '"str"']
    text = "\n".join([good] + bad + [good]).encode("utf-8", "surrogateescape")
    reports = []
    frames = list(frames_from_json_lines(io.BytesIO(text), V, C, M, lambda n, r: reports.append((n, r))))
    assert len(frames) == 2 and len(reports) == len(bad)
    assert [n for n, _ in reports] == list(range(2, 2 + len(bad)))


def test_non_finite_joints_are_absent_and_never_give_a_nan_score(tmp_path):
    rec = ActionRecognizer(make_model(tmp_path / "m.onnx"))
    good = np.random.default_rng(1).normal(size=(1, V, C)).astype(np.float32)
    for value in (np.nan, np.inf, -np.inf):
        rec.reset()
        frame = np.full((1, V, C), value, np.float32)
        assert list(rec.stream([frame] * CLIP)) == []  # every joint absent: no prediction at all
        preds = list(rec.stream([frame] * (CLIP - 1) + [good]))
        assert preds and all(np.isfinite(p.score) for p in preds)
        x = np.random.default_rng(0).normal(size=(1, CLIP, V, C)).astype(np.float32)
        x[0, :, 3] = value
        assert np.isfinite(rec.predict_clip(x).score)


def test_a_huge_declared_npy_is_refused_from_its_header(tmp_path):
    path = tmp_path / "big.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 100000000000, 25, 3), }"
    header = header + " " * (118 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    tracemalloc.start()
    try:
        _, error, peak = bounded_call(read_npy_recording, path, V, C, M)
    finally:
        tracemalloc.stop()
    assert isinstance(error, InputError) and peak < 1 << 20


def _jsonl_cases(rng: np.random.Generator, n: int):
    """Valid frame lines, damaged in every way a stream can be."""
    def person():
        return [[float(v) for v in rng.normal(size=C)] for _ in range(V)]

    def number():
        return rng.choice([0, 1.5, -3, 1e308, 1e-320, float("nan"), float("inf"), 10**30])

    atoms = [None, True, 0, 1.5, "x", [], {}, {"persons": None}, [[]], [None]]
    for i in range(n):
        kind = i % 16
        frame = {"persons": [person() for _ in range(int(rng.integers(0, 4)))]}
        if kind == 0:
            line = json.dumps(frame)
        elif kind == 1:
            line = json.dumps(atoms[int(rng.integers(len(atoms)))])
        elif kind == 2 and frame["persons"]:
            p = frame["persons"][0]
            p[int(rng.integers(V))] = atoms[int(rng.integers(len(atoms)))]
            line = json.dumps(frame)
        elif kind == 3 and frame["persons"]:
            frame["persons"][0][int(rng.integers(V))][int(rng.integers(C))] = number()
            line = json.dumps(frame)
        elif kind == 4:
            depth = int(rng.integers(1, 200_000))
            line = "[" * depth + "]" * int(rng.integers(0, depth + 1))
        elif kind == 5:
            line = "9" * int(rng.integers(1, 20_000))
        elif kind == 6:
            line = json.dumps({"persons": [None] * int(rng.integers(0, 300_000))})
        elif kind == 7:
            line = json.dumps(frame)
            line = line[: int(rng.integers(0, len(line) + 1))]
        elif kind == 8:
            b = bytearray(json.dumps(frame).encode())
            for _ in range(int(rng.integers(1, 8))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
            yield bytes(b)
            continue
        elif kind == 9:
            line = json.dumps({"persons": [person()[: int(rng.integers(0, V + 3))]]})
        elif kind == 10:
            line = json.dumps({"persons": [[[0.0] * int(rng.integers(0, 6))] * V]})
        elif kind == 11:
            line = json.dumps({"people": frame["persons"]})
        elif kind == 12:
            line = json.dumps([person() for _ in range(int(rng.integers(0, 80)))])
        elif kind == 13:
            line = json.dumps({"persons": [[{"x": 1, "y": 2}] * V]})
        elif kind == 14:
            line = "NaN" if rng.random() < 0.5 else '{"persons": [[' + ",".join(["[Infinity,-Infinity,NaN]"] * V) + "]]}"
        else:
            line = json.dumps(frame) + " " * int(rng.integers(0, 3_000_000)) if rng.random() < 0.05 \
                else json.dumps(frame) + "garbage"
        yield line.encode()


def test_json_lines_reader_fuzz(capsys):
    rng = np.random.default_rng(19)
    tracemalloc.start()
    frames = reported = 0
    try:
        for case in _jsonl_cases(rng, FUZZ_CASES):
            reports = []
            result, error, peak = bounded_call(
                lambda b, sink: list(frames_from_json_lines(io.BytesIO(b + b"\n"), V, C, M,
                                                            lambda n, r: sink.append(r))), case, reports)
            assert error is None, (case[:200], error)
            assert peak < 16e6 + 200 * len(case), (case[:200], peak)
            for f in result:
                assert f.dtype == np.float32 and f.shape[1:] == (V, C) and f.shape[0] <= M
                assert np.isfinite(f).all()
            frames += len(result)
            reported += len(reports)
            assert len(result) + len(reports) <= case.count(b"\n") + 1
    finally:
        tracemalloc.stop()
    with capsys.disabled():
        print(f"\nJSONL fuzz: {FUZZ_CASES} cases, {frames} frames read, {reported} lines reported")
    assert frames > 0 and reported > 0


def _npy_cases(rng: np.random.Generator, n: int):
    dtypes = ["<f4", "<f8", "<i2", ">f4", "|u1", "<f2", "|b1", "<c8", "<U3", "|O", "<M8[s]", "V8"]
    for i in range(n):
        kind = i % 10
        shape = [(int(rng.integers(0, 5)), int(rng.integers(0, 40)), V, C),
                 (int(rng.integers(0, 40)), V, C),
                 (int(rng.integers(0, 3)), int(rng.integers(0, 9)), int(rng.integers(0, 30)), int(rng.integers(0, 5))),
                 (V,), ()][int(rng.integers(0, 5)) if kind == 9 else int(rng.integers(0, 2))]
        arr = rng.normal(size=shape).astype(np.float32)
        if kind == 1 and arr.size:
            arr.flat[int(rng.integers(arr.size))] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
        buf = io.BytesIO()
        np.save(buf, arr)
        data = bytearray(buf.getvalue())
        if kind == 2:  # a declared shape (or dtype) that is not the data's
            header = ("{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
                dtypes[int(rng.integers(len(dtypes)))], rng.choice(["False", "True", "1"]),
                rng.choice(["(1, 10**12, 25, 3)", "(99999999999, 25, 3)", "(-1, 25, 3)", "(2**40, 1, 25, 3)",
                            "(1, 3, 25, 3)", "(100000, 1, 25, 3)", "'x'", "(1.5, 25, 3)", "()", "(1,)*40"])))
            header += " " * (118 - len(header) % 64) + "\n"
            data = bytearray(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()) + data[128:]
        elif kind == 3:
            data = data[: int(rng.integers(0, len(data) + 1))]
        elif kind == 4:
            for _ in range(int(rng.integers(1, 10))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        elif kind == 5:  # the header's length field
            pos = 8
            data[pos:pos + 2] = struct.pack("<H", int(rng.integers(0, 65536)))
        elif kind == 6:  # version 2/3 or unknown
            data[6] = int(rng.choice([0, 2, 3, 9]))
        elif kind == 7:
            data = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
        elif kind == 8:
            data = data[:128] + bytearray(b"junk" * int(rng.integers(0, 50)))
        yield bytes(data)


def test_npy_reader_fuzz(tmp_path, capsys):
    rng = np.random.default_rng(19)
    path = tmp_path / "rec.npy"
    tracemalloc.start()
    read = refused = 0
    try:
        for case in _npy_cases(rng, FUZZ_CASES):
            path.write_bytes(case)
            result, error, peak = bounded_call(read_npy_recording, path, V, C, M)
            assert error is None or isinstance(error, InputError), (case[:160], repr(error))
            assert peak < 16e6 + 200 * len(case), (case[:160], peak)
            if error is None:
                assert result.dtype == np.float32 and result.ndim == 4 and result.shape[2:] == (V, C)
                assert result.shape[0] <= M and np.isfinite(result).all()
                read += 1
            else:
                assert str(path) in str(error)
                refused += 1
    finally:
        tracemalloc.stop()
    with capsys.disabled():
        print(f"\n.npy fuzz: {FUZZ_CASES} cases, {read} read, {refused} refused")
    assert read > 0 and refused > 0


def test_model_file_reader_refuses_every_damaged_copy(tmp_path):
    """Neighbour of the input readers: random damage to a stamped model is always refused or,
    where ONNX Runtime still parses it, caught by the hash."""
    data = make_model(tmp_path / "m.onnx").read_bytes()
    x = np.random.default_rng(0).normal(size=(1, C, CLIP, V, M)).astype(np.float32)
    expected = ActionRecognizer(tmp_path / "m.onnx").logits(x)
    rng = np.random.default_rng(3)
    bad = tmp_path / "bad.onnx"
    refused = 0
    for _ in range(200):
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 5))):
            damaged[int(rng.integers(len(damaged)))] ^= int(rng.integers(1, 256))
        bad.write_bytes(bytes(damaged))
        try:
            rec = ActionRecognizer(bad)
        except ModelFileError:
            refused += 1
            continue
        # loaded only when the damage missed everything that computes (e.g. a metadata key's name)
        np.testing.assert_array_equal(rec.logits(x), expected)
    assert refused >= 190
    with pytest.raises(ModelFileError):
        read_model_bytes(tmp_path)


def test_evaluate_refuses_a_planted_target_in_the_checkpoints_or_run_folders_data_config(tmp_path):
    """The neighbour of export: evaluate reads the trained data config from the checkpoint or
    the run folder's config.yaml; a foreign _target_ there is refused before anything is built."""
    from last_lite.evaluate import resolve_data

    marker = tmp_path / "code-ran"
    evil = {"_target_": "last_lite.data.datamodule.SkeletonDataModule",
            "source": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}
    cfg = OmegaConf.create({"ckpt": str(tmp_path / "x.ckpt"), "data": {}})
    with pytest.raises(ConfigError, match="builtins.open"):
        resolve_data(cfg, {"data_spec": {"data_config": evil}})
    assert not marker.exists()
