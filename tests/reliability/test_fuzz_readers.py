"""Fuzzing every reader of outside data with hypothesis.

Each suite builds valid files of its format, then damages them (truncation, byte flips, junk,
non-UTF-8 bytes, wrong joint counts, huge declared counts, NaN and inf, empty files) and checks
that the reader either returns a well-formed result or raises the project's own error naming the
file (``SkeletonFormatError``, a ``ValueError`` subclass, ``StoreError`` for stores, ``InputError``
for the edge runtime's reader of NW-UCLA files) -- never an
unrelated exception, never a hang (a SIGALRM time limit per case) and never a large allocation
(a tracemalloc peak bound per case; numpy reports its buffers to tracemalloc).

The runs are derandomised (the same cases every time, no example database written into the
repository) and bounded by ``max_examples``; ``LAST_LITE_FUZZ_SCALE=10`` multiplies the case
counts and ``LAST_LITE_FUZZ_RANDOM=1`` draws new cases on each run, for a deeper search.
The case count of each suite is printed (``pytest -s``) and listed in docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tracemalloc
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_support import bounded_call

from last_lite.data.ntu_skeleton import SkeletonFormatError, format_skeleton, read_skeleton
from last_lite.data.sources.ctrgcn import CTRGCNSource
from last_lite.data.sources.custom import CustomSource
from last_lite.data.sources.nw_ucla import read_sample
from last_lite.data.store import SkeletonStore, StoreError, StoreWriter
from last_lite.runtime.inputs import read_skeletons_document

SCALE = float(os.environ.get("LAST_LITE_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("LAST_LITE_FUZZ_RANDOM", "") not in ("", "0")
MB = 1 << 20

# cases per suite (before LAST_LITE_FUZZ_SCALE); docs/reliability.md quotes these
CASES = {"ntu": 250, "nw_ucla": 200, "custom": 120, "ctrgcn": 100, "store": 200}


def fuzz(suite: str):
    return settings(max_examples=max(1, int(CASES[suite] * SCALE)), deadline=timedelta(seconds=5),
                    derandomize=not RANDOM, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(autouse=True)
def _trace_memory():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _report(suite: str, count: int, parsed: int) -> None:
    print(f"\nfuzz cases: {suite}: {count} ({parsed} parsed, {count - parsed} refused)")
    assert count >= max(1, int(CASES[suite] * SCALE)) // 2, f"only {count} {suite} cases ran"
    assert 0 < parsed < count, "the cases should mix readable and damaged files"


def _assert_names(err: BaseException, *paths: Path) -> None:
    """The project's error type (a ValueError subclass) naming one of ``paths``."""
    assert isinstance(err, ValueError), f"unrelated exception escaped: {type(err).__name__}: {err}"
    assert any(str(p) in str(err) for p in paths), f"error does not name the file: {err}"


# ------------------------------------------------------------------------------------------------
# generic damage to bytes

JUNK_TOKENS = [b"-1", b"0", b"24", b"26", b"99999999999999999999", b"1" * 5000, b"nan", b"inf",
               b"-inf", b"1e999", b"x", b"0x10", b"1_0", b"+5", b"--1", b"\xff\xfe", b"\x00",
               b"\xc3\x28", "٣".encode(), b"25.0", b"1e3"]


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` with one kind of damage (or none)."""
    kind = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "insert", "delete", "junk",
                                 "empty", "blank", "append"]))
    n = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, max(n - 1, 0)))]
    if kind == "flip" and n:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "insert":
        at = draw(st.integers(0, n))
        return data[:at] + draw(st.binary(min_size=1, max_size=24)) + data[at:]
    if kind == "delete" and n:
        a = draw(st.integers(0, n - 1))
        return data[:a] + data[a + draw(st.integers(1, 64)):]
    if kind == "junk":
        return draw(st.binary(max_size=400))
    if kind == "empty":
        return b""
    if kind == "blank":
        return b" \r\n\t\n"
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return data


@st.composite
def values(draw, shape: tuple[int, ...]) -> np.ndarray:
    """Plausible coordinates with, sometimes, NaN, inf or huge values in a few places."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=shape)
    if x.size and draw(st.booleans()):
        flat = x.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(
                [np.nan, np.inf, -np.inf, 1e300, -1e-300, 0.0]))
    return x


# ------------------------------------------------------------------------------------------------
# NTU .skeleton parser

@st.composite
def ntu_files(draw) -> bytes:
    frames = []
    for _ in range(draw(st.integers(0, 4))):
        bodies = []
        for b in range(draw(st.integers(0, 2))):
            body_id = draw(st.sampled_from([72057594037931101 + b, 1, 0, 2**64 - 1]))
            bodies.append((body_id, draw(values((25, 3)))))
        frames.append(bodies)
    data = format_skeleton(frames, newline=draw(st.sampled_from(["\n", "\r\n"]))).encode("ascii")
    if draw(st.booleans()):  # token-level damage: counts, joint counts, junk tokens
        toks = data.split()
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(toks) - 1))
            toks[i] = draw(st.sampled_from(JUNK_TOKENS + [b"1000000000", b"1000000", b"-5"]))
        if draw(st.booleans()) and len(toks) > 1:
            del toks[draw(st.integers(0, len(toks) - 1))]
        data = b"\n".join(toks) + b"\n"
    return draw(damaged(data))


def test_ntu_skeleton_parser_fuzz(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    count = parsed = 0

    @fuzz("ntu")
    @given(data=ntu_files())
    def check(data):
        nonlocal count, parsed
        count += 1
        path.write_bytes(data)
        res, err, peak = bounded_call(read_skeleton, path)
        if err is not None:
            assert isinstance(err, SkeletonFormatError), f"{type(err).__name__}: {err}"
            assert str(path) in str(err)
        else:
            parsed += 1
            t = res["num_frames"]
            assert res["xyz"].shape[1:] == (t, 25, 3) and res["present"].shape[1:] == (t,)
            assert res["skel_body"].shape[1:] == (t, 25, 3) and res["nbodys"].shape == (t,)
        assert peak <= 16 * MB + 200 * len(data), f"{peak} bytes for a {len(data)}-byte file"

    check()
    _report("ntu", count, parsed)


# ------------------------------------------------------------------------------------------------
# NW-UCLA JSON reader

@st.composite
def nw_ucla_files(draw) -> bytes:
    t = draw(st.integers(0, 4))
    v = draw(st.sampled_from([20, 20, 20, 20, 19, 25]))
    skeletons = draw(values((t, v, 3))).tolist()
    label = draw(st.one_of(st.integers(1, 10),
                           st.sampled_from([0, 11, -1, 10**30, None, "3", "x", 2.5, [1]])))
    doc: object = {"file_name": "a01_s01_e01_v01", "label": label, "skeletons": skeletons}
    edit = draw(st.sampled_from(["none", "none", "none", "drop_key", "ragged", "strings", "top_list",
                                 "deep", "one_frame"]))
    if edit == "drop_key":
        del doc[draw(st.sampled_from(["label", "skeletons"]))]
    elif edit == "ragged" and t:
        skeletons[0] = skeletons[0][:-1]
    elif edit == "strings" and t:
        skeletons[0][0] = ["a", None, {}]
    elif edit == "top_list":
        doc = [doc]
    elif edit == "deep":
        depth = draw(st.sampled_from([70, 100_000]))
        return ("[" * depth + "]" * depth).encode()
    elif edit == "one_frame" and t:
        doc["skeletons"] = skeletons[0]
    data = json.dumps(doc).encode()
    return draw(damaged(data)) if draw(st.booleans()) else data


def test_nw_ucla_reader_fuzz(tmp_path):
    path = tmp_path / "a01_s01_e01_v01.json"
    count = parsed = 0

    @fuzz("nw_ucla")
    @given(data=nw_ucla_files())
    def check(data):
        nonlocal count, parsed
        count += 1
        path.write_bytes(data)
        res, err, peak = bounded_call(read_sample, path)
        if err is not None:
            _assert_names(err, path)
        else:
            parsed += 1
            skel, label = res
            assert skel.ndim == 4 and skel.shape[0] == 1 and skel.shape[2:] == (20, 3)
            assert 0 <= label < 10
        assert peak <= 16 * MB + 200 * len(data), f"{peak} bytes for a {len(data)}-byte file"
        # the edge runtime's reader of the same files: an array, None (not one document) or InputError
        res, err, peak = bounded_call(read_skeletons_document, path, 20, 3)
        if err is not None:
            _assert_names(err, path)
        elif res is not None:
            assert res.dtype == np.float32 and res.shape[0] == 1 and res.shape[2:] == (20, 3)
            assert np.isfinite(res).all()
        assert peak <= 16 * MB + 200 * len(data), f"{peak} bytes for a {len(data)}-byte file"

    check()
    _report("nw_ucla", count, parsed)


# ------------------------------------------------------------------------------------------------
# custom folder: .npy files + labels.csv

def npy_bytes(arr: np.ndarray, shape: tuple[int, ...] | None = None, fortran: bool = False) -> bytes:
    """An .npy file of ``arr``'s data; ``shape`` overrides the declared shape (e.g. huge)."""
    buf = io.BytesIO()
    if shape is None:
        np.save(buf, np.asfortranarray(arr) if fortran else arr, allow_pickle=True)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(arr.dtype),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue() + arr.tobytes()


@st.composite
def custom_npy(draw) -> bytes:
    t = draw(st.integers(1, 5))
    v = draw(st.sampled_from([17, 17, 17, 16, 25]))
    shape = draw(st.sampled_from([(t, v, 3), (1, t, v, 3), (2, t, v, 3), (t, v), (), (t, v, 3, 1, 1),
                                  (0, v, 3)]))
    x = draw(values(shape))
    kind = draw(st.sampled_from(["float32", "float32", "float64", "int16", "bool", "complex64",
                                 "str", "object", "structured", "fortran", "huge", "npz"]))
    if kind == "huge":
        return npy_bytes(x.astype(np.float32), shape=draw(st.sampled_from(
            [(10**10, 17, 3), (2**40, 17, 3), (3, 10**12, 3), (10**15,)])))
    if kind == "npz":
        buf = io.BytesIO()
        np.savez(buf, x=x)
        return buf.getvalue()
    if kind == "str":
        x = x.astype(str)
    elif kind == "object":
        x = np.array([{"a": 1}, None], dtype=object)
    elif kind == "structured":
        x = np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")])
    elif kind in ("fortran",):
        return draw(damaged(npy_bytes(x.astype(np.float32), fortran=True)))
    else:
        x = x.astype(kind)
    return draw(damaged(npy_bytes(x)))


@st.composite
def custom_csv(draw) -> bytes:
    rows = [["name", "label", "split"], ["c0", "wave", "train"], ["c1.npy", "jump", "test"]]
    edit = draw(st.sampled_from(["none", "none", "int_labels", "huge_label", "extra_field",
                                 "missing_column", "short_row", "unlabelled", "bom"]))
    if edit == "int_labels":
        rows[1][1], rows[2][1] = "0", "1"
    elif edit == "huge_label":
        rows[1][1], rows[2][1] = "0", draw(st.sampled_from(["10000000000000", "99999999999999999999"]))
    elif edit == "extra_field":
        rows[1].append("surplus")
    elif edit == "missing_column":
        rows = [r[:2] for r in rows]
    elif edit == "short_row":
        rows[2] = rows[2][:1]
    elif edit == "unlabelled":
        rows[1][1] = ""
    text = "\n".join(",".join(r) for r in rows) + "\n"
    data = ("\ufeff" + text if edit == "bom" else text).encode("utf-8")
    return draw(damaged(data)) if draw(st.booleans()) else data


def test_custom_folder_reader_fuzz(tmp_path):
    count = parsed = 0
    good = np.random.default_rng(0).uniform(0, 1, size=(4, 17, 3)).astype(np.float32)

    @fuzz("custom")
    @given(npy=custom_npy(), table=custom_csv())
    def check(npy, table):
        nonlocal count, parsed
        count += 1
        root = tmp_path / f"case{count}"
        root.mkdir(parents=True)
        files = [root / "c0.npy", root / "c1.npy", root / "labels.csv"]
        files[0].write_bytes(npy)
        np.save(files[1], good)
        files[2].write_bytes(table)
        out = tmp_path / f"store{count}"

        def build():
            CustomSource(root, layout="coco17", coord_dims=2).write(out, "key")
            store = SkeletonStore(out)
            return store, [store.get(i) for i in range(len(store))]

        res, err, peak = bounded_call(build)
        if err is not None:
            _assert_names(err, root)  # the .npy or the CSV inside the folder (names may be damaged)
            assert not out.exists() and not list(tmp_path.glob(f".store{count}.tmp-*"))
        else:
            parsed += 1
            store, samples = res
            assert all(s.ndim == 4 and s.shape[2:] == (17, 3) for s in samples)
        assert peak <= 32 * MB + 200 * len(npy), f"{peak} bytes for a {len(npy)}-byte file"
        shutil.rmtree(root)
        shutil.rmtree(out, ignore_errors=True)

    check()
    _report("custom", count, parsed)


# ------------------------------------------------------------------------------------------------
# CTR-GCN npz importer

@st.composite
def ctrgcn_npz(draw) -> bytes:
    members: dict[str, bytes] = {}
    for part in ("train", "test"):
        n = draw(st.integers(0 if part == "test" else 1, 3))
        t = draw(st.integers(1, 6))
        x = draw(values((n, t, 150))).astype(np.float32)
        labels = np.asarray([draw(st.integers(0, 4)) for _ in range(n)], dtype=np.int64)
        y = np.eye(5, dtype=np.float32)[labels] if draw(st.booleans()) else labels
        members[f"x_{part}"], members[f"y_{part}"] = npy_bytes(x), npy_bytes(y)
    edit = draw(st.sampled_from(["none", "none", "drop", "width", "object", "count", "huge_header",
                                 "huge_label", "fortran", "nan_labels", "zero_d"]))
    key = draw(st.sampled_from(sorted(members)))
    if edit == "drop":
        del members[key]
    elif edit == "width":
        members["x_train"] = npy_bytes(np.zeros((2, 3, 149), np.float32))
    elif edit == "object":
        members[key] = npy_bytes(np.array([{"a": 1}], dtype=object))
    elif edit == "count":
        members["y_train"] = npy_bytes(np.arange(7))
    elif edit == "huge_header":
        members[key] = npy_bytes(np.zeros((2, 150), np.float32), shape=draw(st.sampled_from(
            [(10**12, 150), (10**9, 10**9), (2, 10**12)])))
    elif edit == "huge_label":
        members["y_train"] = npy_bytes(np.array([0, 10**12]))
        members["x_train"] = npy_bytes(np.ones((2, 3, 150), np.float32))
    elif edit == "fortran":
        members["x_train"] = npy_bytes(np.ones((2, 3, 150), np.float32), fortran=True)
        members["y_train"] = npy_bytes(np.array([0, 1]))
    elif edit == "nan_labels":
        members["y_train"] = npy_bytes(np.full((members_len(members["x_train"]), 5), np.nan))
    elif edit == "zero_d":
        members[key] = npy_bytes(np.array(3.0))
    buf = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return draw(damaged(buf.getvalue()))


def members_len(npy: bytes) -> int:
    return int(np.load(io.BytesIO(npy)).shape[0])


def test_ctrgcn_npz_importer_fuzz(tmp_path):
    path = tmp_path / "NTU60_CS.npz"
    count = parsed = 0

    @fuzz("ctrgcn")
    @given(data=ctrgcn_npz())
    def check(data):
        nonlocal count, parsed
        count += 1
        path.write_bytes(data)
        out = tmp_path / f"store{count}"

        def build():
            CTRGCNSource(path, chunk=2).write(out, "key")
            store = SkeletonStore(out)
            return store, [store.get(i) for i in range(len(store))]

        res, err, peak = bounded_call(build)
        if err is not None:
            _assert_names(err, path)
            assert not out.exists() and not list(tmp_path.glob(f".store{count}.tmp-*"))
        else:
            parsed += 1
            store, samples = res
            assert all(s.shape[2:] == (25, 3) for s in samples)
        assert peak <= 32 * MB + 200 * len(data), f"{peak} bytes for a {len(data)}-byte file"
        shutil.rmtree(out, ignore_errors=True)

    check()
    _report("ctrgcn", count, parsed)


# ------------------------------------------------------------------------------------------------
# the store reader

def _base_store(root: Path) -> Path:
    rng = np.random.default_rng(0)
    with StoreWriter(root, "ntu25", 3, class_names=["a", "b", "c"], source="fuzz") as w:
        for i in range(5):
            x = rng.normal(size=(1 + i % 2, 3 + i, 25, 3))
            if i == 4:
                x[0, 1, 2, 0] = np.nan
            w.add(f"s{i}", x, i % 3, subject=i)
        w.set_split("xsub", "train", [0, 1, 2])
        w.set_split("xsub", "test", [3, 4])
    return root


@st.composite
def store_damage(draw):
    name = draw(st.sampled_from(["meta.json", "frames.npy", "offsets.npy", "lengths.npy",
                                 "persons.npy", "labels.npy"]))
    kind = draw(st.sampled_from(["bytes", "bytes", "delete", "huge_header", "meta_field", "meta_type"]))
    if kind == "meta_field" or kind == "meta_type":
        name = "meta.json"
    if kind == "meta_field":
        field = draw(st.sampled_from(["format_version", "num_joints", "channels", "coord_dims", "names",
                                      "num_rows", "class_names", "splits", "nonfinite", "layout",
                                      "index_sha256", "fields"]))
        value = draw(st.sampled_from([None, -1, 0, 10**30, "x", [], {}, 1.5, True, ["a"], [10**6],
                                      {"xsub": {"train": [99]}}, {"xsub": [1]}, "DELETE"]))
        return name, kind, (field, value)
    return name, kind, draw(st.integers(0, 2**32 - 1))


def test_store_reader_fuzz(tmp_path):
    base = _base_store(tmp_path / "base")
    count = parsed = 0

    @fuzz("store")
    @given(damage=store_damage(), data=st.data())
    def check(damage, data):
        nonlocal count, parsed
        count += 1
        root = tmp_path / f"s{count}"
        shutil.copytree(base, root)
        name, kind, arg = damage
        target = root / name
        if kind == "bytes":
            target.write_bytes(data.draw(damaged(target.read_bytes())))
        elif kind == "delete":
            target.unlink()
        elif kind == "huge_header":
            if name == "meta.json":
                target.write_text('{"format_version": 1, "names": ' + "[" * 100_000 + "]" * 100_000 + "}")
            else:
                arr = np.load(target)
                target.write_bytes(npy_bytes(arr, shape=(10**12,) + arr.shape[1:]))
        elif kind == "meta_field":
            meta = json.loads(target.read_text())
            field, value = arg
            if value == "DELETE":
                meta.pop(field, None)
            else:
                meta[field] = value
            target.write_text(json.dumps(meta))
        elif kind == "meta_type":
            target.write_text(json.dumps([1, 2]))

        def read():
            store = SkeletonStore(root)
            samples = [store.get(i) for i in range(len(store))]
            facts = (store.channels, store.num_joints, store.coord_dims, store.class_names,
                     store.num_classes, store.nonfinite, store.layout, store.source)
            for split, parts in store.splits.items():
                for part in parts:
                    idx = store.split(split, part)
                    assert all(0 <= i < len(store) for i in idx)
            return store, samples, facts

        res, err, peak = bounded_call(read)
        if err is not None:
            assert isinstance(err, StoreError), f"unrelated exception escaped: {type(err).__name__}: {err}"
            assert str(root) in str(err)
        else:
            parsed += 1
            store, samples, _ = res
            for i, s in enumerate(samples):
                assert s.shape == (store.persons[i], store.lengths[i], store.num_joints, store.channels)
        assert peak <= 16 * MB, f"{peak} bytes to open a small store"
        shutil.rmtree(root)

    check()
    _report("store", count, parsed)


# ------------------------------------------------------------------------------------------------
# preprocessing: bad files are reported and skipped, the rest is kept

def test_prepare_skips_each_kind_of_bad_file_and_keeps_the_rest(tmp_path):
    """Complements tests/data/test_prepare.py (one truncated real file, needs ../shared/data):
    every kind of damage the fuzzers use, in one run, without shared data."""
    from last_lite.prepare import run_prepare

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    spread = (0.3, 0.8, 0.2)  # taller than wide, or denoising calls the body noise
    good = format_skeleton([[(7, rng.normal(size=(25, 3)) * spread + (0, 0, 3))] for _ in range(15)])
    for a in (1, 2):
        (raw / f"S001C001P001R001A{a:03d}.skeleton").write_text(good)
    bad = {
        3: good.encode()[: len(good) // 2],                      # truncated
        4: good.encode().replace(b"\n25\n", b"\n24\n", 1),        # wrong joint count
        5: b"1000000000\n1\n",                                   # huge declared frame count
        6: good.encode().replace(b"0.5", b"0.5x", 1),             # junk token
        7: good.encode()[:40] + b"\xff\xfe\xc3\x28" + good.encode()[40:],  # non-UTF-8 bytes
        8: b"",                                                  # empty
    }
    for a, data in bad.items():
        (raw / f"S001C001P001R001A{a:03d}.skeleton").write_bytes(data)
    s = run_prepare("ntu60", raw, tmp_path / "out", missing_list="none", num_workers=1, progress=False)
    assert s["kept"] == 2 and s["skipped"] == {"parse error": len(bad)}
    reasons = {f["name"]: f["reason"] for f in s["skipped_files"]}
    for a in bad:
        name = f"S001C001P001R001A{a:03d}"
        assert f"{name}.skeleton" in reasons[name]
    assert len(SkeletonStore(tmp_path / "out")) == 2
