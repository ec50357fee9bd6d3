"""The NTU raw parser (exactness vs the official converter, malformed files) and the denoiser."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from last_lite.data.ntu_skeleton import (
    NTU60_CLASSES,
    NTU120_CLASSES,
    SkeletonFormatError,
    denoise,
    format_skeleton,
    parse_skeleton_bytes,
    read_skeleton,
)

NTU = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ntu"
A001 = NTU / "raw" / "S001C001P001R001A001.skeleton"
A001_CRLF = NTU / "raw_crlf" / "S001C001P001R001A001.skeleton"
A050 = NTU / "raw" / "S001C001P001R001A050.skeleton"
REF = NTU / "reference" / "S001C001P001R001A001.official.npz"
pytestmark = pytest.mark.timeout(120)  # a parser must never hang
needs_shared = pytest.mark.skipif(
    not (A001.is_file() and REF.is_file()),
    reason=f"NTU fixtures not found at {NTU} (../shared/data is absent in a plain clone)",
)


def _body(seed: int, scale=(0.3, 0.8, 0.2), offset=(0.0, 0.0, 3.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(25, 3)) * np.asarray(scale) + np.asarray(offset)


def _write(tmp_path: Path, text: str | bytes, name="S001C001P001R001A001.skeleton") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def _expect_error(path: Path, *fragments: str) -> SkeletonFormatError:
    with pytest.raises(SkeletonFormatError) as info:
        read_skeleton(path)
    err = info.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return err


# ---------------------------------------------------------------------------------------------
# real files


@needs_shared
@pytest.mark.shared_data
@pytest.mark.parametrize("path", [A001, A001_CRLF], ids=["lf", "crlf"])
def test_matches_official_converter_exactly(path):
    ref = np.load(REF, allow_pickle=False)
    sk = read_skeleton(path)
    assert sk["num_frames"] == 103
    assert sk["skel_body"].dtype == ref["skel_body0"].dtype == np.float64
    assert sk["skel_body"].shape == (1, 103, 25, 3)
    np.testing.assert_array_equal(sk["skel_body"][0], ref["skel_body0"])  # bit-exact
    np.testing.assert_array_equal(sk["nbodys"][sk["nbodys"] > 0], ref["nbodys"])
    assert sk["body_ids"].tolist() == [72057594037931101]
    assert sk["present"].all()
    np.testing.assert_array_equal(sk["xyz"][0], ref["skel_body0"])


@needs_shared
@pytest.mark.shared_data
def test_crlf_and_lf_give_the_same_arrays():
    a, b = read_skeleton(A001), read_skeleton(A001_CRLF)
    for key in ("xyz", "present", "skel_body", "nbodys", "body_ids"):
        np.testing.assert_array_equal(a[key], b[key])


@needs_shared
@pytest.mark.shared_data
def test_two_person_file():
    sk = read_skeleton(A050)
    assert sk["num_frames"] == 74
    assert (sk["nbodys"] == 2).all()
    assert len(sk["body_ids"]) == 2 and sk["body_ids"].dtype == np.uint64
    assert sk["present"].shape == (2, 74) and sk["present"].all()
    assert sk["skel_body"].shape == (2, 74, 25, 3)
    res = denoise(sk)
    assert res.keypoints.shape == (2, 74, 25, 3) and res.keypoints.dtype == np.float32
    assert res.person_present.all()
    # both actors kept, each one a real body of the file
    got = {tuple(res.keypoints[m, 0, 0]) for m in range(2)}
    want = {tuple(sk["xyz"][b, 0, 0].astype(np.float32)) for b in range(2)}
    assert got == want


@needs_shared
@pytest.mark.shared_data
def test_single_person_denoise_is_identity():
    sk = read_skeleton(A001)
    res = denoise(sk)
    assert res.keypoints.shape == (1, 103, 25, 3)
    np.testing.assert_array_equal(res.keypoints[0], sk["skel_body"][0].astype(np.float32))


@needs_shared
@pytest.mark.shared_data
def test_truncated_real_file(tmp_path):
    data = A001.read_bytes()
    for cut in (10, 2000, len(data) // 2, len(data) - 30):
        p = _write(tmp_path, data[:cut], f"S001C001P001R001A0{cut % 100:02d}.skeleton")
        err = _expect_error(p, "line")
        assert err.line is not None and err.line >= 1


# ---------------------------------------------------------------------------------------------
# synthetic files


def test_zero_body_frames_many_bodies_and_exponents(tmp_path):
    b = [_body(i) for i in range(5)]
    frames = [[], [(11, b[0])], [(11, b[0]), (22, b[1]), (33, b[2]), (44, b[3]), (55, b[4])], [],
              [(22, b[1])]]
    text = format_skeleton(frames).replace(" 0.01 ", " 1e-02 ", 1)
    sk = read_skeleton(_write(tmp_path, text))
    assert sk["num_frames"] == 5
    assert sk["nbodys"].tolist() == [0, 1, 5, 0, 1]
    assert sk["body_ids"].tolist() == [11, 22, 33, 44, 55]
    assert sk["present"].sum(1).tolist() == [2, 2, 1, 1, 1]
    assert sk["skel_body"].shape == (5, 5, 25, 3)
    np.testing.assert_allclose(sk["xyz"][1, 4], b[1], rtol=1e-6)
    np.testing.assert_allclose(sk["skel_body"][0, 4], b[1], rtol=1e-6)  # position, not ID
    assert (sk["xyz"][1, 1] == 0).all() and not sk["present"][1, 1]


def test_exponent_floats_and_crlf_parse_exactly(tmp_path):
    j = np.zeros((25, 12))
    j[:, :3] = 1.0
    text = format_skeleton([[(7, j)]], newline="\r\n")
    text = text.replace("\r\n1 1 1 ", "\r\n1.5E-03 -2.5e+01 7 ", 1)
    sk = read_skeleton(_write(tmp_path, text))
    assert sk["xyz"][0, 0, 0].tolist() == [0.0015, -25.0, 7.0]


def test_big_body_ids_stay_distinct(tmp_path):
    ids = [18446744073709551615, 18446744073709551614]  # differ below float64 resolution
    frames = [[(ids[0], _body(0)), (ids[1], _body(1))]] * 3
    sk = read_skeleton(_write(tmp_path, format_skeleton(frames)))
    assert sk["body_ids"].tolist() == ids


def test_empty_and_blank_files(tmp_path):
    _expect_error(_write(tmp_path, b"", "S001C001P001R001A001.skeleton"), "empty")
    _expect_error(_write(tmp_path, b"\r\n \n", "S001C001P001R001A002.skeleton"), "empty")


def test_truncated_synthetic(tmp_path):
    text = format_skeleton([[(1, _body(0))]] * 4)
    lines = text.splitlines(keepends=True)
    _expect_error(_write(tmp_path, "".join(lines[:60])), "truncated")
    _expect_error(_write(tmp_path, "".join(lines[:28])), "truncated")  # ends after frame 1
    # a line cut in half: fewer tokens than the structure needs
    _expect_error(_write(tmp_path, "".join(lines[:40]) + lines[40][:10]), "truncated")


def test_junk_token(tmp_path):
    lines = format_skeleton([[(1, _body(0))]] * 3).splitlines(keepends=True)
    lines[10] = lines[10].replace(" ", " abc ", 1)
    err = _expect_error(_write(tmp_path, "".join(lines)), "junk token 'abc'")
    assert err.line == 11
    lines = format_skeleton([[(1, _body(0))]] * 3).splitlines(keepends=True)
    lines[5] = "1.2.3" + lines[5][lines[5].index(" "):]  # numeric-looking garbage in x
    err = _expect_error(_write(tmp_path, "".join(lines), "S001C001P001R001A002.skeleton"), "1.2.3")
    assert err.line == 6


def test_wrong_joint_count(tmp_path):
    lines = format_skeleton([[(1, _body(0))]] * 3).splitlines(keepends=True)
    assert lines[3].strip() == "25"
    lines[3] = "20\n"
    err = _expect_error(_write(tmp_path, "".join(lines)), "joint count 20", "expected 25")
    assert err.line == 4


def test_extra_field_and_trailing_garbage(tmp_path):
    lines = format_skeleton([[(1, _body(0))]] * 3).splitlines(keepends=True)
    lines[7] = lines[7].rstrip("\n") + " 5\n"  # a joint line with 13 fields
    _expect_error(_write(tmp_path, "".join(lines)), "line")
    text = format_skeleton([[(1, _body(0))]] * 2) + "1 2 3\n"
    _expect_error(_write(tmp_path, text, "S001C001P001R001A003.skeleton"), "unexpected tokens")


def test_bad_counts(tmp_path):
    _expect_error(_write(tmp_path, "x\n0\n"), "junk token", "line 1")
    _expect_error(_write(tmp_path, "1.5\n0\n"), "frame count", "line 1")
    _expect_error(_write(tmp_path, "-3\n"), "negative frame count")
    _expect_error(_write(tmp_path, "2\n0\n-1\n"), "negative body count")
    _expect_error(_write(tmp_path, "1\n1000000000\n" + "0 " * 300), "truncated")


def test_huge_declared_frame_count_does_not_allocate(tmp_path):
    body = format_skeleton([[(1, _body(0))]]).split("\n", 1)[1]  # one frame, no frame count
    text = ("1000000000\n" + body)[:1024]
    path = _write(tmp_path, text)
    assert path.stat().st_size <= 1024
    tracemalloc.start()
    try:
        _expect_error(path, "1000000000 frames")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def test_non_utf8_bytes(tmp_path):
    data = format_skeleton([[(1, _body(0))]]).encode()
    data = data[:100] + b"\xff\xfe\x80" + data[100:]
    err = _expect_error(_write(tmp_path, data), "non-ASCII")
    assert err.line is not None
    _expect_error(_write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00", "S001C001P001R001A002.skeleton"))


def test_missing_file_is_a_format_error(tmp_path):
    _expect_error(tmp_path / "S001C001P001R001A099.skeleton", "cannot read")


def test_parse_bytes_without_path():
    with pytest.raises(SkeletonFormatError, match="<bytes>"):
        parse_skeleton_bytes(b"3\n0\n")


# ---------------------------------------------------------------------------------------------
# denoising rules


def _moving(seed: int, n: int, amp: float, offset=(0.0, 0.0, 3.0)) -> list[np.ndarray]:
    base = _body(seed, offset=offset)
    rng = np.random.default_rng(seed + 100)
    return [base + amp * rng.normal(size=(25, 3)) for _ in range(n)]


def _flat_body(seed: int) -> np.ndarray:
    """A 'body' lying on its side: x-spread far larger than y-spread (spread noise)."""
    return _body(seed, scale=(1.0, 0.05, 0.1))


def test_denoise_drops_short_and_spread_noise_bodies(tmp_path):
    T = 40
    a = _moving(1, T, 0.05)
    short = _moving(2, 5, 0.3, offset=(1, 0, 3))
    flat = [_flat_body(3) + 0.5 * i for i in range(T)]  # lots of motion, but noise
    frames = []
    for t in range(T):
        bodies = [(100, a[t]), (300, flat[t])]
        if t < 5:
            bodies.append((200, short[t]))
        frames.append(bodies)
    res = denoise(read_skeleton(_write(tmp_path, format_skeleton(frames))))
    assert res.keypoints.shape == (1, T, 25, 3)
    np.testing.assert_allclose(res.keypoints[0], np.stack(a), rtol=1e-6)


def test_denoise_keeps_the_two_most_moving_bodies(tmp_path):
    T = 30
    slow, mid, fast = _moving(1, T, 0.01), _moving(2, T, 0.05, (1, 0, 3)), _moving(3, T, 0.2, (2, 0, 3))
    frames = [[(1, slow[t]), (2, mid[t]), (3, fast[t])] for t in range(T)]
    res = denoise(read_skeleton(_write(tmp_path, format_skeleton(frames))))
    assert res.keypoints.shape == (2, T, 25, 3)
    np.testing.assert_allclose(res.keypoints[0], np.stack(fast), rtol=1e-6)
    np.testing.assert_allclose(res.keypoints[1], np.stack(mid), rtol=1e-6)


def test_denoise_places_frames_by_index_and_drops_empty_frames(tmp_path):
    # actor A in frames 0..39; B in 10..29 (overlaps A -> actor 2); C in 45..69 after A (-> actor 1)
    A, B, C = _moving(1, 40, 0.2), _moving(2, 20, 0.1, (1, 0, 3)), _moving(3, 25, 0.05, (2, 0, 3))
    frames = []
    for t in range(72):
        bodies = []
        if t < 40:
            bodies.append((1, A[t]))
        if 10 <= t < 30:
            bodies.append((2, B[t - 10]))
        if 45 <= t < 70:
            bodies.append((3, C[t - 45]))
        frames.append(bodies)
    sk = read_skeleton(_write(tmp_path, format_skeleton(frames)))
    res = denoise(sk)
    # frames 40..44 and 70, 71 are empty: dropped; true length kept
    assert res.keypoints.shape == (2, 65, 25, 3)
    assert res.kept_frames.tolist() == list(range(40)) + list(range(45, 70))
    np.testing.assert_allclose(res.keypoints[0, :40], np.stack(A), rtol=1e-6)
    np.testing.assert_allclose(res.keypoints[0, 40:], np.stack(C), rtol=1e-6)
    np.testing.assert_allclose(res.keypoints[1, 10:30], np.stack(B), rtol=1e-6)
    assert res.person_present[1].sum() == 20 and (res.keypoints[1, :10] == 0).all()


def test_denoise_nothing_left():
    assert denoise(parse_skeleton_bytes(b"3\n0\n0\n0\n")) is None
    frames = [[(1, _body(0)), (2, _body(1))]] * 5  # two bodies, both <= 11 frames
    assert denoise(parse_skeleton_bytes(format_skeleton(frames).encode())) is None


def test_class_names():
    assert len(NTU60_CLASSES) == 60 and len(NTU120_CLASSES) == 120
    assert NTU120_CLASSES[:60] == NTU60_CLASSES
    assert NTU60_CLASSES[0] == "drink water" and NTU60_CLASSES[49] == "punching/slapping other person"
    assert NTU120_CLASSES[119].startswith("finger-guessing game")
    assert len(set(NTU120_CLASSES)) == 120


def test_numpy_only():
    import subprocess

    code = "import sys, last_lite.data.ntu_skeleton; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_denoise_single_survivor_keeps_only_its_frames(tmp_path):
    # A (frames 0..29) and a short noise body B (frames 30..34, after A): B is dropped by
    # length, and the frames where only B was present go with it
    A, B = _moving(1, 30, 0.1), _moving(2, 5, 0.1, (1, 0, 3))
    frames = [[(1, A[t])] for t in range(30)] + [[(2, B[t])] for t in range(5)]
    res = denoise(read_skeleton(_write(tmp_path, format_skeleton(frames))))
    assert res.keypoints.shape == (1, 30, 25, 3) and res.person_present.all()
    assert res.kept_frames.tolist() == list(range(30))


# ---------------------------------------------------------------------------------------------
# the denoiser against a line-by-line re-implementation of get_raw_skes_data.py +
# get_raw_denoised_data.py (dict of bodies, float32, contiguous intervals)


def _reference(text: str) -> np.ndarray:
    lines = text.splitlines()
    num_frames = int(lines[0])
    bodies: dict[str, dict] = {}
    valid_frames, cur, dropped = -1, 1, 0
    for _ in range(num_frames):
        nb = int(lines[cur])
        cur += 1
        if nb == 0:
            dropped += 1
            continue
        valid_frames += 1
        for _b in range(nb):
            body_id = lines[cur].split()[0]
            cur += 1
            nj = int(lines[cur])
            cur += 1
            j = np.zeros((25, 3), dtype=np.float32)
            for k in range(nj):
                j[k] = np.array(lines[cur].split()[:3], dtype=np.float32)
                cur += 1
            if body_id not in bodies:
                bodies[body_id] = {"joints": j, "interval": [valid_frames]}
            else:
                b = bodies[body_id]
                b["joints"] = np.vstack((b["joints"], j))
                b["interval"].append(b["interval"][-1] + 1)
    T = num_frames - dropped
    if len(bodies) > 1:
        for b in bodies.values():
            b["motion"] = np.sum(np.var(b["joints"], axis=0))

    def one(b):
        out = np.zeros((T, 75), dtype=np.float32)
        out[b["interval"][0]:b["interval"][-1] + 1] = b["joints"].reshape(-1, 75)
        return out

    if len(bodies) == 1:
        return one(next(iter(bodies.values())))
    for bid in list(bodies):  # length
        if len(bodies[bid]["interval"]) <= 11:
            del bodies[bid]
    if len(bodies) > 1:  # spread
        for bid, b in list(bodies.items()):
            if len(bodies) == 1:
                break
            pts = b["joints"].reshape(-1, 25, 3)
            valid = [i for i in range(len(pts))
                     if np.ptp(pts[i, :, 0]) <= 0.8 * np.ptp(pts[i, :, 1])]
            n = len(b["interval"])
            noise = n - len(valid)
            if noise == 0:
                continue
            if noise / n >= 0.69754:
                del bodies[bid]
            else:
                b["motion"] = min(b["motion"], np.sum(np.var(pts[valid].reshape(-1, 3), axis=0)))
    if not bodies:
        return None
    if len(bodies) == 1:
        joints = one(next(iter(bodies.values())))
    else:
        order = sorted(bodies.items(), key=lambda x: x[1]["motion"], reverse=True)
        joints = np.zeros((T, 150), dtype=np.float32)
        _, a1 = order[0]
        s1, e1 = a1["interval"][0], a1["interval"][-1]
        joints[s1:e1 + 1, :75] = a1["joints"].reshape(-1, 75)
        s2, e2 = 0, 0
        for _, b in order[1:]:
            s, e = b["interval"][0], b["interval"][-1]
            if min(e1, e) - max(s1, s) <= 0:
                joints[s:e + 1, :75] = b["joints"].reshape(-1, 75)
                s1, e1 = min(s, s1), max(e, e1)
            elif min(e2, e) - max(s2, s) <= 0:
                joints[s:e + 1, 75:] = b["joints"].reshape(-1, 75)
                s2, e2 = min(s, s2), max(e, e2)
    return joints[joints.sum(axis=1) != 0]  # remove_missing_frames


def test_denoise_matches_the_reference_script():
    rng = np.random.default_rng(123)
    checked = 0
    for case in range(60):
        T = int(rng.integers(15, 60))
        nb = int(rng.integers(1, 5))
        frames: list[list] = [[] for _ in range(T)]
        for b in range(nb):
            n = int(rng.integers(3, T + 1))
            start = int(rng.integers(0, T - n + 1))
            kind = rng.choice(["body", "flat", "half"], p=[0.6, 0.2, 0.2])
            track = _moving(1000 * case + b, n, float(rng.uniform(0.01, 0.2)), (b, 0, 3))
            for t in range(n):
                j = track[t]
                if kind == "flat" or (kind == "half" and t % 2 == 0):
                    j = _flat_body(b) + (b, 0, 3) + 0.01 * t
                frames[start + t].append((1000 + b, j))
        if not any(frames):
            continue
        text = format_skeleton(frames)
        want = _reference(text)
        res = denoise(parse_skeleton_bytes(text.encode()))
        if want is None:
            assert res is None
            continue
        got = res.keypoints.transpose(1, 0, 2, 3).reshape(res.keypoints.shape[1], -1)
        if want.shape[1] == 150 and not want[:, 75:].any():
            want = want[:, :75]
        assert got.shape == want.shape, (case, got.shape, want.shape)
        np.testing.assert_array_equal(got, want)
        checked += 1
    assert checked >= 50
