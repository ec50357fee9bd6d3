"""NTU RGB+D: the raw ``.skeleton`` parser, the standard denoising, sample names and splits.

numpy only (the edge runtime reuses this module): never import torch here.

The raw format (whitespace separated, CRLF or LF, floats possibly in exponent form)::

    <frame count>
    per frame:  <body count>                      (0 occurs)
      per body: bodyID clippedEdges handLeftConfidence handLeftState handRightConfidence
                handRightState isRestricted leanX leanY trackingState     (bodyID: 64-bit int)
                <joint count>                     (25)
                25 x: x y z depthX depthY colorX colorY oW oX oY oZ trackingState

``read_skeleton`` tokenises the whole file at once (``bytes.split``), walks the small per-frame /
per-body headers in Python and converts the x, y, z tokens of every joint in one numpy call. Its
``skel_body`` array reproduces the dataset authors' converter (``read_skeleton_file`` /
``txt2npy``) exactly: float64, body slots by position within each frame, zeros where absent.

``denoise`` applies the rules of the ``get_raw_denoised_data.py`` script used by 2s-AGCN,
MS-G3D, CTR-GCN and most later work (length, spread, then the two bodies with the most motion).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "SkeletonFormatError",
    "NUM_JOINTS",
    "NTU60_CLASSES",
    "NTU120_CLASSES",
    "BENCHMARKS",
    "DATASET_BENCHMARKS",
    "SampleInfo",
    "parse_sample_name",
    "read_sample_list",
    "is_training_sample",
    "split_indices",
    "sample_fields",
    "in_dataset",
    "read_skeleton",
    "parse_skeleton_bytes",
    "format_skeleton",
    "denoise",
    "DenoiseResult",
]

NUM_JOINTS = 25
_JOINT_FIELDS = 12
_BODY_FIELDS = 10
_BLOCK = _BODY_FIELDS + 1 + NUM_JOINTS * _JOINT_FIELDS  # tokens per body: info, joint count, joints
# Dense per-body arrays hold (bodies x frames) slots; real NTU files need at most a few thousand.
_MAX_BODY_FRAMES = 200_000
# ... and their bytes are bounded by the file's size: a file of mostly empty frames listing many
# body IDs (217 KB declaring 100,000 frames) would otherwise cost 600x its size. Real files
# (<= 300 frames, a few bodies) stay far below the 16 MiB floor.
_DENSE_FLOOR_BYTES = 16 << 20
_DENSE_PER_FILE_BYTE = 16
# the largest .skeleton file read at all (real ones are below 3 MB)
MAX_FILE_BYTES = 256 << 20

# ----------------------------------------------------------------------------------------------
# errors


class SkeletonFormatError(ValueError):
    """A ``.skeleton`` file (or another reader's sample file: NW-UCLA JSON, custom ``.npy``,
    CTR-GCN npz) that is truncated, malformed or not a skeleton file at all."""

    def __init__(self, path: str | os.PathLike | None, message: str, line: int | None = None):
        self.path = str(path) if path is not None else "<bytes>"
        self.line = line
        self.reason = message
        where = f"{self.path}: line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


# ----------------------------------------------------------------------------------------------
# class names (the official order; label = action number - 1)

NTU60_CLASSES: tuple[str, ...] = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup",
    "throw", "sitting down", "standing up (from sitting position)", "clapping", "reading",
    "writing", "tear up paper", "wear jacket", "take off jacket", "wear a shoe",
    "take off a shoe", "wear on glasses", "take off glasses", "put on a hat/cap",
    "take off a hat/cap", "cheer up", "hand waving", "kicking something", "reach into pocket",
    "hopping (one foot jumping)", "jump up", "make a phone call/answer phone",
    "playing with phone/tablet", "typing on a keyboard", "pointing to something with finger",
    "taking a selfie", "check time (from watch)", "rub two hands together", "nod head/bow",
    "shake head", "wipe face", "salute", "put the palms together",
    "cross hands in front (say stop)", "sneeze/cough", "staggering", "falling",
    "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm", "punching/slapping other person",
    "kicking other person", "pushing other person", "pat on back of other person",
    "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
)
NTU120_CLASSES: tuple[str, ...] = NTU60_CLASSES + (
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball",
    "tennis bat swing", "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up",
    "thumb down", "make ok sign", "make victory sign", "staple book", "counting money",
    "cutting nails", "cutting paper (using scissors)", "snapping fingers", "open bottle",
    "sniff (smell)", "squat down", "toss a coin", "fold paper", "ball up paper",
    "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag",
    "take off bag", "put something into a bag", "take something out of a bag", "open a box",
    "move heavy objects", "shake fist", "throw up cap/hat", "hands up (both hands)",
    "cross arms", "arm circles", "arm swings", "running on the spot",
    "butt kicks (kick backward)", "cross toe touch", "side kick", "yawn", "stretch oneself",
    "blow nose", "hit other person with something", "wield knife towards other person",
    "knock over other person (hit with body)", "grab other person's stuff",
    "shoot at other person with a gun", "step on foot", "high-five", "cheers and drink",
    "carry something with other person", "take a photo of other person",
    "follow other person", "whisper in other person's ear",
    "exchange things with other person", "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",
)
assert len(NTU60_CLASSES) == 60 and len(NTU120_CLASSES) == 120

# ----------------------------------------------------------------------------------------------
# sample names and the standard benchmarks

_NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
# the whole file name: "...A0601" or "...A001 (1).skeleton" is not a sample (a prefix match
# would read them as action 60 and as the real sample)
_FILE_RE = re.compile(_NAME_RE.pattern + r"(?:\.skeleton)?")
_LIST_LINE_RE = re.compile(r"^\s*(S\d{3}C\d{3}P\d{3}R\d{3}A\d{3})(?:\.skeleton)?\b")

NTU60_XSUB_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
)
NTU60_XVIEW_TRAIN_CAMERAS = frozenset((2, 3))
NTU120_XSUB_TRAIN_SUBJECTS = NTU60_XSUB_TRAIN_SUBJECTS | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85,
     86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
)
#: benchmark -> the dataset it belongs to
BENCHMARKS = {"xsub": "ntu60", "xview": "ntu60", "xsub120": "ntu120", "xset": "ntu120"}
DATASET_BENCHMARKS = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub120", "xset")}
DATASET_CLASSES = {"ntu60": NTU60_CLASSES, "ntu120": NTU120_CLASSES}


@dataclass(frozen=True)
class SampleInfo:
    name: str
    setup: int
    camera: int
    performer: int
    replication: int
    action: int  # 1-based, as in the name

    @property
    def label(self) -> int:
        return self.action - 1


def parse_sample_name(name: str | os.PathLike) -> SampleInfo:
    """``S001C002P003R002A013[.skeleton]`` (or a path to it) -> SampleInfo."""
    stem = Path(name).name
    m = _FILE_RE.fullmatch(stem)
    if m is None:
        raise ValueError(f"not an NTU sample name (SsssCcccPpppRrrrAaaa[.skeleton]): {str(name)!r}")
    s, c, p, r, a = (int(g) for g in m.groups())
    return SampleInfo(stem.removesuffix(".skeleton"), s, c, p, r, a)


def read_sample_list(path: str | os.PathLike) -> list[str]:
    """Sample names from a list file (the official missing-skeleton lists, available lists).

    Lines that do not start with a sample name (the two header sentences, blank lines,
    comments) are ignored; CRLF, a BOM and trailing ``.skeleton`` are tolerated.
    """
    text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    out = []
    for line in text.splitlines():
        m = _LIST_LINE_RE.match(line)
        if m:
            out.append(m.group(1))
    return out


def in_dataset(info: SampleInfo, dataset: str) -> bool:
    """NTU-60 is setups 1-17 with actions 1-60; NTU-120 adds setups 18-32 and actions 61-120."""
    if dataset == "ntu60":
        return info.setup <= 17 and info.action <= 60
    if dataset == "ntu120":
        return info.action <= 120
    raise ValueError(f"unknown NTU dataset {dataset!r} (expected ntu60 or ntu120)")


def is_training_sample(info: SampleInfo | str, benchmark: str) -> bool:
    """Whether a sample belongs to the training part of a standard benchmark."""
    if not isinstance(info, SampleInfo):
        info = parse_sample_name(info)
    if benchmark == "xsub":
        return info.performer in NTU60_XSUB_TRAIN_SUBJECTS
    if benchmark == "xview":
        return info.camera in NTU60_XVIEW_TRAIN_CAMERAS
    if benchmark == "xsub120":
        return info.performer in NTU120_XSUB_TRAIN_SUBJECTS
    if benchmark == "xset":
        return info.setup % 2 == 0
    raise ValueError(f"unknown NTU benchmark {benchmark!r} (expected one of {sorted(BENCHMARKS)})")


def sample_fields(names: Sequence[str | SampleInfo]) -> np.ndarray:
    """(N, 5) int64 array of (setup, camera, performer, replication, action) for many names."""
    if all(isinstance(n, SampleInfo) for n in names):
        rows = [(n.setup, n.camera, n.performer, n.replication, n.action) for n in names]
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), 5)
    stems = [n.name if isinstance(n, SampleInfo) else os.path.basename(os.fspath(n)) for n in names]
    match = _FILE_RE.fullmatch
    for s in stems:
        if match(s) is None:
            parse_sample_name(s)  # raises, naming the culprit
    if not stems:
        return np.zeros((0, 5), dtype=np.int64)
    # digits of "SsssCcccPpppRrrrAaaa" at positions 1-3, 5-7, 9-11, 13-15, 17-19
    d = np.array([s[:20] for s in stems], dtype="<U20").view(np.uint32).reshape(-1, 20).astype(np.int64) - 48
    pos = np.arange(5) * 4 + 1
    return d[:, pos] * 100 + d[:, pos + 1] * 10 + d[:, pos + 2]


def split_indices(names: Sequence[str | SampleInfo], benchmark: str) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of ``names`` under a benchmark, each ascending int64."""
    f = sample_fields(names)
    setup, camera, performer = f[:, 0], f[:, 1], f[:, 2]
    if benchmark == "xsub":
        flags = np.isin(performer, sorted(NTU60_XSUB_TRAIN_SUBJECTS))
    elif benchmark == "xview":
        flags = np.isin(camera, sorted(NTU60_XVIEW_TRAIN_CAMERAS))
    elif benchmark == "xsub120":
        flags = np.isin(performer, sorted(NTU120_XSUB_TRAIN_SUBJECTS))
    elif benchmark == "xset":
        flags = setup % 2 == 0
    else:
        raise ValueError(f"unknown NTU benchmark {benchmark!r} (expected one of {sorted(BENCHMARKS)})")
    return np.flatnonzero(flags).astype(np.int64), np.flatnonzero(~flags).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# parser

_ALLOWED = b"0123456789.eE+-\r\n\t\x0b\x0c "
_XYZ_OFFSETS = (np.arange(NUM_JOINTS)[:, None] * _JOINT_FIELDS + np.arange(3)[None, :]).ravel()


def _line_of_token(data: bytes, k: int) -> int:
    """1-based line of the k-th whitespace-separated token (slow; error paths only)."""
    seen = 0
    for lineno, line in enumerate(data.splitlines(), 1):
        n = len(line.split())
        if seen + n > k:
            return lineno
        seen += n
    return max(len(data.splitlines()), 1)


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_skeleton(path: str | os.PathLike) -> dict:
    """Parse one NTU ``.skeleton`` file; see ``parse_skeleton_bytes`` for the result."""
    from last_lite.io import open_regular

    try:  # a regular file only: a FIFO would block, a dangling symlink or loop is reported
        with open_regular(path, max_bytes=MAX_FILE_BYTES) as fh:
            data = fh.read()
    except OSError as exc:
        raise SkeletonFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    return parse_skeleton_bytes(data, path)


def parse_skeleton_bytes(data: bytes, path: str | os.PathLike | None = None) -> dict:
    """Parse the bytes of a ``.skeleton`` file.

    Returns a dict:

    - ``num_frames`` int T (as declared, empty frames included)
    - ``nbodys`` (T,) int64: bodies listed in each frame
    - ``body_ids`` (B,) uint64: the distinct body IDs in order of first appearance
    - ``xyz`` (B, T, 25, 3) float64: each body's joints by frame, zeros where absent
    - ``present`` (B, T) bool: frames where each body is listed
    - ``skel_body`` (P, T, 25, 3) float64 with P = max(nbodys): the official converter's
      ``skel_body{p}`` arrays (p-th body listed in each frame, zeros where absent);
      ``skel_body[0]`` equals the official ``skel_body0``.

    The whole file is tokenised at once (``bytes.split``); only the per-frame and per-body
    headers are walked in Python, and all x, y, z tokens are converted in one numpy call (the
    same correctly rounded conversion as Python's ``float``, as the official converter uses).
    Raises SkeletonFormatError (naming the file and the line) on anything malformed; memory
    stays bounded by the file's size whatever the header declares.
    """
    where = path if path is not None else "<bytes>"

    def fail(msg: str, line: int | None = None):
        raise SkeletonFormatError(where, msg, line)

    if not data.strip():
        fail("empty file (no frame count)")
    if not data.isascii():
        pos = next(i for i, b in enumerate(data) if b >= 0x80)
        fail(f"non-ASCII byte 0x{data[pos]:02x} at offset {pos} (not a text .skeleton file?)",
             _line_at(data, pos))
    if data.translate(None, _ALLOWED):
        # letters etc.: fine only inside valid float tokens ("nan", "inf"); find the culprit
        for k, tok in enumerate(data.split()):
            if tok.translate(None, _ALLOWED):
                try:
                    float(tok)
                except ValueError:
                    fail(f"junk token {tok.decode('ascii')!r}", _line_of_token(data, k))

    toks = data.split()
    ntok = len(toks)

    def as_int(k: int, what: str) -> int:
        try:
            return int(toks[k])
        except ValueError:
            fail(f"{what}: expected an integer, got {toks[k].decode('ascii')!r}", _line_of_token(data, k))

    nframe = as_int(0, "frame count")
    if nframe < 0:
        fail(f"negative frame count {nframe}", 1)
    if nframe > ntok - 1:
        fail(f"declares {nframe} frames but the file holds only {ntok - 1} more tokens "
             "(truncated or corrupt header)", 1)

    nbodys = np.zeros(nframe, dtype=np.int64)
    block_pos: list[int] = []  # token index of each body's first joint field
    block_frame: list[int] = []
    block_id: list[bytes] = []
    i = 1
    for f in range(nframe):
        if i >= ntok:
            fail(f"file ends before frame {f + 1} of {nframe} (truncated)", _line_of_token(data, ntok))
        nb = as_int(i, f"body count of frame {f + 1}")
        if nb < 0:
            fail(f"negative body count {nb} in frame {f + 1}", _line_of_token(data, i))
        if nb * _BLOCK > ntok - i - 1:
            fail(f"frame {f + 1} declares {nb} bodies but the file ends first (truncated)",
                 _line_of_token(data, i))
        nbodys[f] = nb
        i += 1
        for b in range(nb):
            as_int(i, f"body ID of body {b + 1} in frame {f + 1}")
            if toks[i + _BODY_FIELDS] != b"25":
                njoint = as_int(i + _BODY_FIELDS, f"joint count of body {b + 1} in frame {f + 1}")
                if njoint != NUM_JOINTS:
                    fail(f"joint count {njoint} of body {b + 1} in frame {f + 1} (expected {NUM_JOINTS})",
                         _line_of_token(data, i + _BODY_FIELDS))
            block_id.append(toks[i])
            block_frame.append(f)
            i += _BODY_FIELDS + 1
            block_pos.append(i)
            i += NUM_JOINTS * _JOINT_FIELDS
    if i != ntok:
        fail(f"{ntok - i} unexpected tokens after the last of {nframe} frames "
             "(wrong field count or corrupt file)", _line_of_token(data, i))

    nblock = len(block_pos)
    if nblock:
        idx = (np.asarray(block_pos, dtype=np.int64)[:, None] + _XYZ_OFFSETS[None, :]).ravel().tolist()
        picked = itemgetter(*idx)(toks)
        try:
            flat = np.array(picked, dtype=np.float64)
        except ValueError:
            for k in idx:
                try:
                    float(toks[k])
                except ValueError:
                    fail(f"bad number {toks[k].decode('ascii')!r}", _line_of_token(data, k))
            raise
        joints = flat.reshape(nblock, NUM_JOINTS, 3)
    else:
        joints = np.zeros((0, NUM_JOINTS, 3), dtype=np.float64)

    # distinct bodies, in order of first appearance
    uniq: dict[bytes, int] = {}
    body_of_block = np.fromiter(
        (uniq.setdefault(bid, len(uniq)) for bid in block_id), dtype=np.int64, count=nblock
    )
    nbody = len(uniq)
    nslot = int(nbodys.max()) if nframe else 0
    if max(nbody, nslot) * nframe > _MAX_BODY_FRAMES:
        fail(f"implausible: {nbody} distinct bodies over {nframe} frames")
    dense = (nbody + nslot) * nframe * NUM_JOINTS * 3 * 8
    if dense > _DENSE_FLOOR_BYTES + _DENSE_PER_FILE_BYTE * len(data):
        fail(f"implausible: {nbody} distinct bodies over {nframe} frames (mostly empty) would take "
             f"{dense / 2**20:.0f} MiB for a {len(data) / 1024:.0f} KiB file")
    frames = np.asarray(block_frame, dtype=np.int64)

    xyz = np.zeros((nbody, nframe, NUM_JOINTS, 3), dtype=np.float64)
    present = np.zeros((nbody, nframe), dtype=bool)
    xyz[body_of_block, frames] = joints
    present[body_of_block, frames] = True

    # official layout: p-th body listed in each frame
    slot = np.zeros(nblock, dtype=np.int64)
    if nblock:
        first = np.cumsum(nbodys) - nbodys  # index of each frame's first block
        slot = np.arange(nblock) - np.repeat(first, nbodys)
    skel_body = np.zeros((nslot, nframe, NUM_JOINTS, 3), dtype=np.float64)
    skel_body[slot, frames] = joints

    ids = [int(b) for b in uniq]
    return {
        "num_frames": nframe,
        "nbodys": nbodys,
        "body_ids": np.array(ids, dtype=np.uint64 if all(0 <= v < 2**64 for v in ids) else object),
        "xyz": xyz,
        "present": present,
        "skel_body": skel_body,
    }


_JOINT_LINE = " ".join(["%.7g"] * 11 + ["%d"])
_BODY_LINE = "%d 0 1 1 1 1 0 %.7g %.7g 2"


def format_skeleton(frames: Sequence[Sequence[tuple[int, np.ndarray]]], newline: str = "\n") -> str:
    """Write frames in the raw ``.skeleton`` format (tests, benchmarks, synthetic data).

    ``frames[t]`` lists ``(body_id, joints)`` with joints (25, 3) xyz or (25, 12) all fields
    (missing fields are filled with plausible depth/colour values and tracking state 2).
    """
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for body_id, joints in bodies:
            j = np.asarray(joints, dtype=np.float64)
            if j.shape[-1] == 3:
                full = np.empty((j.shape[0], 12))
                full[:, :3] = j
                full[:, 3:5] = 256.0 + 100.0 * j[:, :2]  # depthX, depthY
                full[:, 5:7] = 960.0 + 300.0 * j[:, :2]  # colorX, colorY
                full[:, 7:11] = (0.5, 0.5, 0.5, 0.5)  # orientation quaternion
                full[:, 11] = 2
                j = full
            out.append(_BODY_LINE % (int(body_id), 0.01, 0.02))
            out.append(str(j.shape[0]))
            out.extend(_JOINT_LINE % tuple(row) for row in j.tolist())
    return newline.join(out) + newline


# ----------------------------------------------------------------------------------------------
# denoising (get_raw_denoised_data.py)

NOISE_LEN_THRES = 11  # bodies tracked for <= 11 frames are noise
NOISE_SPR_THRES1 = 0.8  # a frame is noisy when x-spread > 0.8 * y-spread
NOISE_SPR_THRES2 = 0.69754  # a body is noise when >= this fraction of its frames is noisy


@dataclass
class DenoiseResult:
    """``keypoints`` (M, T, 25, 3) float32 (M = 1 or 2 persons actually present, T = frames kept),
    ``person_present`` (M, T) bool, ``kept_frames`` the original frame indices, ``notes``."""

    keypoints: np.ndarray
    person_present: np.ndarray
    kept_frames: np.ndarray
    notes: list[str]


def _motion(j: np.ndarray) -> float:
    """sum over x, y, z of the variance over all (frame, joint) points (the reference 'motion')."""
    return float(np.var(j.reshape(-1, 3), axis=0).sum()) if len(j) else 0.0


def denoise(sk: dict) -> DenoiseResult | None:
    """Select up to two actors from a parsed file, as ``get_raw_denoised_data.py`` does.

    Empty frames (no body) are dropped first. One body ID: kept as is. Several: drop bodies
    tracked for <= 11 frames; drop bodies whose frames are mostly "spread" noise (x-spread >
    0.8 y-spread in >= 69.754% of their frames; otherwise their motion is recomputed on the
    clean frames); sort the rest by motion (variance of the joints) and fill actor 1 with the
    most moving body plus any later body that does not overlap it in time, actor 2 with the
    next ones that do not overlap actor 2's interval (which, as in the reference, starts at frame
    0); bodies overlapping both are dropped, then frames with neither actor.
    Unlike the reference (which copies a body's frames contiguously from its first frame),
    each body's frames are placed by their frame index.

    Returns None when nothing is left (no bodies, or all bodies filtered out).
    """
    nbodys = sk["nbodys"]
    valid = np.flatnonzero(nbodys > 0)
    notes: list[str] = []
    if valid.size == 0:
        return None
    xyz = sk["xyz"][:, valid].astype(np.float32)
    present = sk["present"][:, valid]
    nbody, T = present.shape

    if nbody == 1:
        kp = xyz[:1]
        return DenoiseResult(kp, present[:1].copy(), valid, notes)

    frames_of = [np.flatnonzero(present[b]) for b in range(nbody)]
    motion = {b: _motion(xyz[b, frames_of[b]]) for b in range(nbody)}
    bodies = list(range(nbody))  # insertion (first appearance) order, like the reference dict

    # step 1: length
    kept = [b for b in bodies if len(frames_of[b]) > NOISE_LEN_THRES]
    for b in bodies:
        if b not in kept:
            notes.append(f"body {b}: {len(frames_of[b])} frames (length)")
    bodies = kept
    if not bodies:
        return None

    # step 2: spread
    if len(bodies) > 1:
        for b in list(bodies):
            if len(bodies) == 1:
                break
            j = xyz[b, frames_of[b]]
            xs = j[:, :, 0].max(1) - j[:, :, 0].min(1)
            ys = j[:, :, 1].max(1) - j[:, :, 1].min(1)
            ok = xs <= NOISE_SPR_THRES1 * ys
            n = len(ok)
            noise = n - int(ok.sum())
            if noise == 0:
                continue
            if noise / n >= NOISE_SPR_THRES2:
                bodies.remove(b)
                notes.append(f"body {b}: {noise}/{n} spread-noise frames (spread)")
            else:
                motion[b] = min(motion[b], _motion(j[ok]))

    if len(bodies) == 1:
        b = bodies[0]
        kp = xyz[b][None]
        pres = present[b][None]
    else:
        # step 3: the two actors, by motion
        order = sorted(bodies, key=lambda b: motion[b], reverse=True)  # stable, like the reference
        kp = np.zeros((2, T, NUM_JOINTS, 3), dtype=np.float32)
        pres = np.zeros((2, T), dtype=bool)
        first = order[0]
        fr = frames_of[first]
        kp[0, fr] = xyz[first, fr]
        pres[0, fr] = True
        start1, end1 = int(fr[0]), int(fr[-1])
        start2, end2 = 0, 0  # the reference's (virtual) initial interval of actor 2
        for b in order[1:]:
            fr = frames_of[b]
            start, end = int(fr[0]), int(fr[-1])
            if min(end1, end) - max(start1, start) <= 0:  # no overlap with actor 1
                kp[0, fr] = xyz[b, fr]
                pres[0, fr] = True
                start1, end1 = min(start, start1), max(end, end1)
            elif min(end2, end) - max(start2, start) <= 0:  # no overlap with actor 2
                kp[1, fr] = xyz[b, fr]
                pres[1, fr] = True
                start2, end2 = min(start, start2), max(end, end2)
            else:
                notes.append(f"body {b}: overlaps both actors (dropped)")
        if not pres[1].any():
            kp, pres = kp[:1], pres[:1]
    # frames where no kept actor is present are dropped (the reference's remove_missing_frames)
    keep_frames = pres.any(0)
    if not keep_frames.all():
        kp, pres, valid = kp[:, keep_frames], pres[:, keep_frames], valid[keep_frames]
    return DenoiseResult(np.ascontiguousarray(kp), np.ascontiguousarray(pres), valid, notes)
