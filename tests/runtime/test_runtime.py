"""The edge runtime on a tiny hand-built ONNX model (no torch): metadata, frame formats, the sliding
window, normalize_clip parity, the CLI on every input kind, and importing without torch."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime  # noqa: F401  (a hard dependency: a missing one fails here, never skips)
import pytest

from last_lite.data.normalize import normalize_clip  # noqa: E402
from last_lite.data.ntu_skeleton import format_skeleton  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["wave", "sit", "jump"]
CLIP, V, C, M = 16, 25, 3, 2


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_model(path: Path, metadata: dict | None = None, tail: list | None = None, tail_init: list = (),
               output_shape: tuple = ("batch", len(CLASSES))) -> Path:
    """logits = mean over (T, V, M) of x (N, C) @ W (C, K) + mean|x| * b: a tiny model whose
    output depends on the normalised input. ``tail`` (nodes, with their initializers
    ``tail_init``) replaces the bias: from ``lin`` (N, K) and ``skeleton`` to ``logits`` of
    ``output_shape``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(C, len(CLASSES))).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([0.5, -0.2, 0.1], np.float32), "b")
    nodes = [helper.make_node("ReduceMean", ["skeleton"], ["pooled"], axes=[2, 3, 4], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["lin"])]
    init = [w]
    if tail is None:
        nodes += [helper.make_node("Abs", ["pooled"], ["absp"]),
                  helper.make_node("ReduceMean", ["absp"], ["mag"], axes=[1], keepdims=1),
                  helper.make_node("Mul", ["mag", "b"], ["bias"]),
                  helper.make_node("Add", ["lin", "bias"], ["logits"])]
        init.append(b)
    else:
        nodes += tail
        init += list(tail_init)
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("skeleton", TensorProto.FLOAT, ["batch", C, CLIP, V, M])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(output_shape))], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"format": "last_lite.onnx/1", "model": "tiny", "class_names": CLASSES, "layout": "ntu25",
            "clip_len": CLIP, "max_persons": M, "in_channels": C, "coord_dims": 3,
            "normalization": {"prenormalize": "3d", "mode": "resize", "crop_ratio": 0.95,
                              "num_clips": 1, "coord_dims": 3, "source": "synthetic"}}
    if metadata is not None:
        meta = metadata
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def recording(frames: int = 40, persons: int = 1, seed: int = 0) -> np.ndarray:
    """A plausible raw (M, T, 25, 3) recording: a standing body plus smooth motion, in metres."""
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=0.3, size=(persons, 1, V, C)).astype(np.float32)
    base[..., 1] += np.linspace(0, 1.7, V, dtype=np.float32)  # roughly vertical
    t = np.linspace(0, 2 * np.pi, frames, dtype=np.float32)[None, :, None, None]
    wave = 0.1 * np.sin(t + rng.uniform(0, 6, size=(persons, 1, V, C))).astype(np.float32)
    return (base + wave + np.array([0, 0, 3.0], np.float32)).astype(np.float32)


def test_metadata_and_whole_clip_match_normalize_clip(model_path):
    import onnxruntime as ort

    from last_lite.runtime import ActionRecognizer

    rec = ActionRecognizer(model_path, threads=1)
    assert rec.class_names == tuple(CLASSES) and rec.info.clip_len == CLIP
    assert rec.info.prenormalize == "3d" and rec.window == CLIP and rec.stride == CLIP // 8
    x = recording(37, persons=2)
    clip = normalize_clip(x, "ntu25", CLIP, M, prenormalize="3d")
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"skeleton": clip.transpose(3, 1, 2, 0)[None]})[0][0]
    pred = rec.predict_clip(x)
    assert pred.class_index == int(np.argmax(logits)) and pred.label == CLASSES[pred.class_index]
    p = np.exp(logits - logits.max())
    assert pred.score == pytest.approx(float(p.max() / p.sum()), rel=1e-5)
    assert pred.latency_ms > 0 and pred.window_frames == 37


def test_sliding_window_and_stride(model_path):
    from last_lite.runtime import ActionRecognizer

    rec = ActionRecognizer(model_path, window=CLIP, stride=4, threads=1)
    x = recording(30)
    preds = [rec.push(x[:, t]) for t in range(30)]
    got = [t for t, p in enumerate(preds) if p is not None]
    assert got == [15, 19, 23, 27]  # first once the window is full, then every 4 frames
    # the prediction at frame 27 is the whole-clip prediction of frames 12..27
    ref = ActionRecognizer(model_path, threads=1).predict_clip(x[:, 12:28])
    assert preds[27].class_index == ref.class_index and preds[27].score == pytest.approx(ref.score, rel=1e-6)
    tail = rec.finish()  # frames 28, 29 arrived after the last prediction
    assert tail is not None and tail.frame_index == 29 and rec.finish() is None
    assert rec.latency_summary()["predictions"] == 5


def test_short_recording_predicts_on_finish(model_path):
    from last_lite.runtime import ActionRecognizer

    rec = ActionRecognizer(model_path, threads=1)
    x = recording(9)
    preds = list(rec.stream(x[:, t] for t in range(9)))
    assert len(preds) == 1 and preds[0].window_frames == 9
    assert preds[0].class_index == ActionRecognizer(model_path).predict_clip(x).class_index


def test_frame_formats_are_equivalent(model_path):
    from last_lite.runtime import ActionRecognizer, as_frame

    x = recording(CLIP, persons=2)
    arrays = ActionRecognizer(model_path, threads=1)
    lists = ActionRecognizer(model_path, threads=1)
    for t in range(CLIP):
        a = arrays.push(x[:, t])
        b = lists.push({"persons": x[:, t].tolist()})
    assert a is not None and b is not None and a.class_index == b.class_index
    assert a.score == pytest.approx(b.score, rel=1e-6)
    one = as_frame(x[0, 0], V, C)  # (V, C): one person
    assert one.shape == (1, V, C)
    f = as_frame({"persons": [[None] * V, x[1, 0].tolist()]}, V, C)
    assert f.shape == (2, V, C) and not f[0].any()
    assert as_frame([], V, C).shape == (0, V, C) and as_frame(None, V, C).shape == (0, V, C)
    with pytest.raises(ValueError, match="joints"):
        as_frame([[[0, 0, 0]] * 3], V, C)
    with pytest.raises(ValueError, match="values"):
        as_frame([[[0, 0]] * V], V, C)
    # frames with varying person counts are padded with absent persons
    rec = ActionRecognizer(model_path, window=4, stride=1, threads=1)
    for frame in ([x[0, 0].tolist()], [], [x[0, 2].tolist(), x[1, 2].tolist()], [x[0, 3].tolist()]):
        rec.push({"persons": frame})
    w = rec.window_array()
    assert w.shape == (2, 4, V, C) and not w[:, 1].any() and w[1, 2].any()


def test_model_without_metadata_is_refused(tmp_path):
    from last_lite.runtime import ActionRecognizer

    path = make_model(tmp_path / "plain.onnx", metadata={"format": "something else"})
    with pytest.raises(ValueError, match="last_lite metadata"):
        ActionRecognizer(path)


def test_runtime_imports_and_runs_without_torch(model_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "import last_lite.runtime\n"
        "from last_lite.runtime import ActionRecognizer\n"
        f"rec = ActionRecognizer({str(model_path)!r}, threads=1)\n"
        "p = None\n"
        f"for t in range({CLIP}):\n"
        f"    p = rec.push(np.random.default_rng(t).normal(size=(1, {V}, {C})).astype('float32') + 1)\n"
        "assert p is not None\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m, v in sys.modules.items() if v is not None)\n"
        "print('ok', p.label)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")


def _cli(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "last_lite.runtime", *args], env=_env(), input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_cli_on_json_lines_stdin_npy_and_skeleton(model_path, tmp_path):
    x = recording(24, persons=1)
    lines = "\n".join(json.dumps({"persons": x[:, t].tolist()}) for t in range(24)) + "\n"
    jl = tmp_path / "rec.jsonl"
    jl.write_text(lines)
    np.save(tmp_path / "rec.npy", x)
    sk = tmp_path / "S001C001P001R001A001.skeleton"
    sk.write_text(format_skeleton([[(72057594037931101, x[0, t])] for t in range(24)]))
    document = tmp_path / "a01_s01_e00_v03.json"  # NW-UCLA's all_sqe format: one document, not lines
    document.write_text(json.dumps({"file_name": document.stem, "label": 1, "skeletons": x[0].tolist()}))
    (tmp_path / "lines.json").write_text(lines)  # JSON lines named .json: still read line by line

    outputs = {}
    for name, args, stdin in (("jsonl", ["--input", str(jl)], None), ("stdin", ["--input", "-"], lines),
                              ("npy", ["--input", str(tmp_path / "rec.npy")], None),
                              ("document", ["--input", str(document)], None),
                              ("lines.json", ["--input", str(tmp_path / "lines.json")], None),
                              ("skeleton", ["--input", str(sk)], None)):
        proc = _cli("--model", str(model_path), "--stride", "4", "--json", *args, stdin=stdin)
        assert proc.returncode == 0, (name, proc.stderr)
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        windows = [r for r in records if r["type"] == "window"]
        summary = records[-1]
        assert summary["type"] == "summary" and summary["frames"] == 24
        assert summary["predictions"] == len(windows) == 3 and summary["p95_ms"] >= summary["p50_ms"] > 0
        assert [w["frame_index"] for w in windows] == [15, 19, 23]
        outputs[name] = [(w["class_index"], round(w["score"], 4)) for w in windows]
    assert outputs["jsonl"] == outputs["stdin"] == outputs["npy"] == outputs["document"] == outputs["lines.json"]
    # the .skeleton text keeps ~7 significant digits: same classes
    assert [c for c, _ in outputs["skeleton"]] == [c for c, _ in outputs["npy"]]

    proc = _cli("--model", str(model_path), "--input", str(tmp_path / "rec.npy"), "--whole", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert "whole recording (24 frames)" in proc.stdout and "p50" in proc.stdout
    bad = _cli("--model", str(model_path), "--input", str(tmp_path / "missing.jsonl"))
    assert bad.returncode != 0 and "no such input file" in bad.stderr
    for skeletons, message in (([[[0.0, 1.0, 2.0]], [[0.0]]], r'"skeletons" must be \[T\]\[V\]\[C\] numbers'),
                               ([[[0.0, 1.0, 2.0]] * 20], "20 joints of 3 values, the model expects 25 of 3")):
        document.write_text(json.dumps({"skeletons": skeletons}))
        bad = _cli("--model", str(model_path), "--input", str(document), "--layout", "ntu25")
        assert bad.returncode == 2 and re.search(message, bad.stderr), bad.stderr


def _zoo_model() -> str:
    from last_lite.runtime.__main__ import resolve_model

    if "nw_ucla/last_lite_small" not in json.loads((ROOT / "zoo" / "index.json").read_text()):
        pytest.skip("zoo model nw_ucla/last_lite_small is not in zoo/index.json")
    return resolve_model("zoo:nw_ucla/last_lite_small")


def test_a_window_without_joints_gets_no_prediction(tmp_path, capsys):
    """A trained network still names a class, confidently, for an empty input (the NW-UCLA zoo
    model says "walk around" at 0.96): a window or recording with no joint present gets none."""
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import cli
    from last_lite.runtime.inputs import InputError

    model = _zoo_model()
    rec = ActionRecognizer(model, stride=8, threads=1)
    joints, clip = rec.num_joints, rec.info.clip_len
    assert list(rec.stream([None] * (clip + 5))) == []  # nobody in view: push and finish
    nan = np.full((1, joints, C), np.nan, np.float32)
    assert list(rec.stream([nan] * clip + [[]] * 3)) == []
    empty = (np.full((1, 40, joints, C), np.nan, np.float32), np.zeros((0, 40, joints, C), np.float32),
             np.zeros((2, 40, joints, C), np.float32))
    for x in empty:
        with pytest.raises(InputError, match="no joint present in"):
            rec.predict_clip(x)
    # a person walking in: predictions resume on the stride's schedule
    person = (np.random.default_rng(0).normal(size=(1, joints, C)) * 0.2 + [0, 0, 3]).astype(np.float32)
    rec.reset()
    preds = [rec.push(None) for _ in range(clip)] + [rec.push(person) for _ in range(8)]
    assert [i for i, p in enumerate(preds) if p is not None] == [clip + 7]
    np.save(tmp_path / "nan.npy", empty[0])
    assert cli(["--model", model, "--input", str(tmp_path / "nan.npy"), "--threads", "1"]) == 0
    assert "40 frames, no prediction" in capsys.readouterr().out
    assert cli(["--model", model, "--input", str(tmp_path / "nan.npy"), "--whole", "--threads", "1"]) == 2
    assert "no joint present in" in capsys.readouterr().err


def test_a_model_of_another_shape_or_that_fails_to_run_is_a_model_file_error(tmp_path, capsys):
    from onnx import helper, numpy_helper

    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import cli
    from last_lite.runtime.inputs import ModelFileError

    # logits (batch, 2, K): the last axis matched the class names, then predictions indexed past them
    pairs = make_model(tmp_path / "pairs.onnx", output_shape=("batch", 2, len(CLASSES)), tail=[
        helper.make_node("Unsqueeze", ["lin", "axis1"], ["one"]),
        helper.make_node("Concat", ["one", "one"], ["logits"], axis=1)],
        tail_init=[numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    with pytest.raises(ModelFileError, match=r"pairs.onnx.*output must be \(batch, classes\)"):
        ActionRecognizer(pairs)
    # loads, then fails inside ONNX Runtime: 2400 values per clip do not reshape to rows of 7
    breaks = make_model(tmp_path / "breaks.onnx", tail=[
        helper.make_node("Reshape", ["skeleton", "rows7"], ["rows"]),
        helper.make_node("ReduceSum", ["rows"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["lin", "nothing"], ["logits"])],
        tail_init=[numpy_helper.from_array(np.array([-1, 7], np.int64), "rows7"),
                   numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    rec = ActionRecognizer(breaks, threads=1)
    with pytest.raises(ModelFileError, match=r"breaks.onnx failed to run"):
        rec.predict_clip(recording(20))
    np.save(tmp_path / "rec.npy", recording(20))
    assert cli(["--model", str(breaks), "--input", str(tmp_path / "rec.npy"), "--whole"]) == 2
    err = capsys.readouterr().err
    assert "breaks.onnx failed to run" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_frames_built_from_numpy_values_read_like_lists(model_path):
    from last_lite.runtime import ActionRecognizer, as_frame

    x = recording(CLIP, persons=2)
    frame = x[:, 0]
    expected = as_frame(frame, V, C)
    for built in ([frame[0], frame[1]], [list(frame[0]), list(frame[1])],
                  [[[np.float32(v) for v in joint] for joint in person] for person in frame],
                  {"persons": [frame[0].astype(np.float64), frame[1]]}):
        np.testing.assert_array_equal(as_frame(built, V, C), expected)
    assert as_frame([[[np.int64(1), np.int32(2), np.uint8(3)]] * V], V, C)[0, 0].tolist() == [1, 2, 3]
    with_nan = frame[0].copy()
    with_nan[4, 1] = np.nan
    got = as_frame([with_nan], V, C)
    assert not got[0, 4].any() and got[0, 5].any()  # a NaN joint is still absent
    for bad, message in (([[[np.bool_(True), 0.0, 0.0]] * V], "must be a number, got bool"),
                         ([[[True, 0.0, 0.0]] * V], "must be a number, got bool"),
                         ([frame[0][:24]], "person 0 has 24 joints"),
                         ([frame[0][:, :2]], "person 0 joint 0 has 2 values"),
                         ([np.zeros((V, 4))], r"person 0 holds 100 values \(shape \(25, 4\)\)"),
                         ([np.float32(1.0)], "person 0 must be a list of joints"),
                         ([[np.array("abc")] * V], "person 0 joint 0 must be a list of numbers")):
        with pytest.raises(ValueError, match=message):
            as_frame(bad, V, C)
    arrays, lists = ActionRecognizer(model_path, threads=1), ActionRecognizer(model_path, threads=1)
    for t in range(CLIP):
        a, b = arrays.push(x[:, t]), lists.push([x[0, t], x[1, t]])
    assert a is not None and b is not None and a.score == b.score


@pytest.mark.parametrize("setting", [{"window": 0}, {"stride": 0}, {"min_frames": 0}, {"window": -3},
                                     {"min_frames": CLIP + 1}, {"window": 8.0}, {"stride": True}])
def test_window_settings_of_zero_or_not_whole_are_refused_never_the_default(model_path, setting):
    from last_lite.runtime import ActionRecognizer

    name = next(iter(setting))
    with pytest.raises(ValueError, match=rf"{name} must be"):
        ActionRecognizer(model_path, **setting)
    rec = ActionRecognizer(model_path, window=np.int64(8), stride=1, min_frames=np.int64(4))
    assert (rec.window, rec.stride, rec.min_frames) == (8, 1, 4)
    proc = _cli("--model", str(model_path), "--input", "-", "--window", "0", stdin="")
    assert proc.returncode == 2 and "window must be between 1 and" in proc.stderr


def test_a_tflite_model_without_litert_asks_for_it_without_blaming_the_file(tmp_path, monkeypatch, capsys):
    from last_lite.runtime import ActionRecognizer
    from last_lite.runtime.__main__ import cli

    model = tmp_path / "model.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + bytes(64))  # the identifier is all the runtime looks at first
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match="pip install ai-edge-litert"):
        ActionRecognizer(model)
    assert cli(["--model", str(model), "--input", "-"]) == 2
    err = capsys.readouterr().err
    assert "pip install ai-edge-litert" in err and "not a loadable" not in err and "Traceback" not in err
