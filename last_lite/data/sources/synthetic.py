"""A deterministic synthetic NTU-style data set (layout ``ntu25``, 3D), needing no files.

Each sample is generated from a small kinematic body model: per-subject bone lengths and motion
style, 16 action classes (three two-person interactions), deliberately confusable pairs (fast vs.
slow wave, punch vs. point, squat vs. sit down, clap vs. rub hands, handshake vs. give object),
random viewpoint (rotation about the vertical and camera tilt), speed and repetition count,
smooth idle motion, sensor noise and variable length. Every sample then goes through
:func:`~last_lite.data.normalize.pre_normalize_3d`, like the NTU preprocessing.

The split ``xsub`` is by subject (train subjects 1-10, test subjects 11-16). Difficulty is tunable:
``noise`` (sensor noise, metres), ``confusion`` (0 = the confusable pairs are easy to tell apart,
1 = they differ only in subtle cues) and ``motion_jitter`` (random limb motion, metres). Sample
``i`` is generated from ``np.random.default_rng([seed, i])``, so the data does not depend on
the machine or on how many samples are asked for.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from last_lite.data.normalize import pre_normalize_3d
from last_lite.data.sources import Source
from last_lite.data.store import StoreWriter

CLASS_NAMES = (
    "wave right hand", "wave right hand slowly", "raise both hands", "punch", "point forward",
    "kick", "squat", "sit down", "bow", "jump", "clap", "rub hands", "walk in place",
    "handshake", "push other person", "give object",
)
TWO_PERSON = {13, 14, 15}
CONFUSABLE_PAIRS = ((0, 1), (3, 4), (6, 7), (10, 11), (13, 15))
TRAIN_SUBJECTS = tuple(range(1, 11))
TEST_SUBJECTS = tuple(range(11, 17))

# ntu25 joint indices (0-based)
(SPINE_BASE, SPINE_MID, NECK, HEAD, SHOULDER_L, ELBOW_L, WRIST_L, HAND_L, SHOULDER_R, ELBOW_R,
 WRIST_R, HAND_R, HIP_L, KNEE_L, ANKLE_L, FOOT_L, HIP_R, KNEE_R, ANKLE_R, FOOT_R, SPINE_SHOULDER,
 HANDTIP_L, THUMB_L, HANDTIP_R, THUMB_R) = range(25)


# --------------------------------------------------------------------------------------------
# body model
# --------------------------------------------------------------------------------------------
class Body:
    """Bone lengths (metres) and motion style of one subject, from ``rng([seed, 10_000 + id])``.

    Body frame: x = the person's left, y = up, z = forward (right-handed); the feet stand on y = 0.
    """

    def __init__(self, subject: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 10_000 + subject])
        h = rng.uniform(0.88, 1.12)

        def j(base: float) -> float:
            return base * h * rng.uniform(0.94, 1.06)

        self.spine1, self.spine2, self.neck, self.head = j(0.24), j(0.22), j(0.07), j(0.13)
        self.shoulder_w, self.hip_w = j(0.17), j(0.09)
        self.upper_arm, self.forearm, self.hand, self.tip = j(0.28), j(0.25), j(0.07), j(0.05)
        self.thigh, self.shin, self.ankle_h, self.foot = j(0.42), j(0.41), 0.07 * h, j(0.12)
        self.amp = rng.uniform(0.8, 1.2)      # how large this subject's gestures are
        self.tempo = rng.uniform(0.85, 1.15)  # how many repetitions this subject tends to do
        self.lean = rng.uniform(-0.06, 0.1)   # posture
        self.pelvis_h = self.ankle_h + (self.thigh + self.shin) * 0.985 + 0.05
        self.shoulder_y = self.pelvis_h + self.spine1 + self.spine2 - 0.03

    @property
    def arm(self) -> float:
        return self.upper_arm + self.forearm


@lru_cache(maxsize=256)
def _body(subject: int, seed: int) -> Body:
    return Body(subject, seed)


def _norm(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _ik(root: np.ndarray, target: np.ndarray, l1: float, l2: float,
        pole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-bone IK over T: (middle joint, reached end) for a chain root -> mid -> end."""
    d_vec = target - root
    d_raw = np.linalg.norm(d_vec, axis=-1, keepdims=True)
    u = d_vec / np.maximum(d_raw, 1e-9)
    d = np.clip(d_raw, abs(l1 - l2) + 1e-3, (l1 + l2) * 0.999)
    a = (l1 * l1 - l2 * l2 + d * d) / (2 * d)
    h = np.sqrt(np.maximum(l1 * l1 - a * a, 0.0))
    n = pole - (pole * u).sum(-1, keepdims=True) * u
    n = _norm(n)
    return root + a * u + h * n, root + d * u


def _rot_y(a: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations about the vertical."""
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1),
                     np.stack([-s, z, c], -1)], -2)


def _rot_x(a: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations about the left axis; positive leans the trunk forward (y -> z)."""
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1),
                     np.stack([z, s, c], -1)], -2)


def _apply(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate (T, 3) or (3,) vectors by (T, 3, 3) rotations."""
    if v.ndim == 1:
        return r @ v
    return (r @ v[..., None])[..., 0]


class Motion:
    """Per-frame motion of one person in its body frame (filled in by an action)."""

    def __init__(self, body: Body, t: int) -> None:
        self.body, self.t = body, t
        self.pelvis = np.zeros((t, 3))
        self.pelvis[:, 1] = body.pelvis_h
        self.lean = np.full(t, body.lean)
        self.twist = np.zeros(t)
        self.ankle_l = np.tile([body.hip_w, body.ankle_h, 0.0], (t, 1))
        self.ankle_r = np.tile([-body.hip_w, body.ankle_h, 0.0], (t, 1))
        self.ankles_follow_pelvis = np.zeros(t)  # 1 = airborne (ankles move with the pelvis)
        # wrist targets: None = hang; else ("trunk", offset from the shoulder in the trunk frame)
        # or ("body", absolute body-frame position); blended with the hang pose by weight w.
        self.wrist_l: tuple[str, np.ndarray, np.ndarray] | None = None
        self.wrist_r: tuple[str, np.ndarray, np.ndarray] | None = None


def _pose(m: Motion, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Joint positions (T, 25, 3) in the body frame."""
    b, t = m.body, m.t
    out = np.zeros((t, 25, 3))
    smooth = _smooth_noise(rng, t, 8, 3) * jitter  # idle motion: (T, 8, 3)
    rt = _rot_y(m.twist) @ _rot_x(m.lean + smooth[:, 7, 0] * 0.5)
    ry = _rot_y(m.twist)
    pelvis = m.pelvis + smooth[:, 6] * 0.3
    out[:, SPINE_BASE] = pelvis
    out[:, SPINE_MID] = pelvis + _apply(rt, np.array([0, b.spine1, 0.01]))
    out[:, SPINE_SHOULDER] = out[:, SPINE_MID] + _apply(rt, np.array([0, b.spine2, -0.01]))
    out[:, NECK] = out[:, SPINE_SHOULDER] + _apply(rt, np.array([0, b.neck, 0.01]))
    out[:, HEAD] = out[:, NECK] + _apply(rt, np.array([0, b.head, 0.02])) + smooth[:, 5] * 0.3
    up = _apply(rt, np.array([0.0, 1.0, 0.0]))
    fwd = _apply(rt, np.array([0.0, 0.0, 1.0]))
    for side, sh, el, wr, ha, tip, th, spec, k in (
            (1, SHOULDER_L, ELBOW_L, WRIST_L, HAND_L, HANDTIP_L, THUMB_L, m.wrist_l, 0),
            (-1, SHOULDER_R, ELBOW_R, WRIST_R, HAND_R, HANDTIP_R, THUMB_R, m.wrist_r, 1)):
        shoulder = out[:, SPINE_SHOULDER] + _apply(rt, np.array([side * b.shoulder_w, -0.03, 0.0]))
        out[:, sh] = shoulder
        hang = shoulder + np.array([side * 0.04, -b.arm * 0.96, 0.05])
        target = hang
        if spec is not None:
            frame, vec, w = spec
            goal = shoulder + _apply(rt, vec) if frame == "trunk" else vec
            target = hang + (goal - hang) * w[:, None]
        target = target + smooth[:, k] * (1.0 + 0.5 * k)
        pole = _apply(rt, np.array([side * 0.7, -1.0, -0.5]))
        elbow, wrist = _ik(shoulder, target, b.upper_arm, b.forearm, pole)
        fdir = _norm(wrist - elbow)
        out[:, el], out[:, wr] = elbow, wrist
        out[:, ha] = wrist + fdir * b.hand
        out[:, tip] = out[:, ha] + fdir * b.tip
        side_vec = _norm(np.cross(fdir, up) * -side + fwd * 0.3)
        out[:, th] = wrist + fdir * b.hand * 0.6 + side_vec * 0.035
    for side, hip, knee, ank, foot, ankle in (
            (1, HIP_L, KNEE_L, ANKLE_L, FOOT_L, m.ankle_l),
            (-1, HIP_R, KNEE_R, ANKLE_R, FOOT_R, m.ankle_r)):
        hip_pos = pelvis + _apply(ry, np.array([side * b.hip_w, -0.05, 0.0]))
        air = m.ankles_follow_pelvis[:, None] * (pelvis - m.pelvis[0])
        target = ankle + air + smooth[:, 2 + (side < 0)] * 0.3
        target[:, 1] = np.maximum(target[:, 1], b.ankle_h * 0.9)
        pole = _apply(ry, np.array([0.0, 0.0, 1.0]))
        k_pos, a_pos = _ik(hip_pos, target, b.thigh, b.shin, pole)
        out[:, hip], out[:, knee], out[:, ank] = hip_pos, k_pos, a_pos
        out[:, foot] = a_pos + _apply(ry, np.array([0.0, -b.ankle_h * 0.6, b.foot]))
    return out


def _smooth_noise(rng: np.random.Generator, t: int, n: int, d: int) -> np.ndarray:
    """(T, n, d) smooth random curves of roughly unit amplitude (a few slow sinusoids)."""
    u = np.linspace(0.0, 1.0, t)[:, None, None, None]
    freq = rng.uniform(0.3, 2.0, size=(1, n, d, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(1, n, d, 3))
    amp = rng.normal(0, 0.6, size=(1, n, d, 3))
    return (amp * np.sin(2 * np.pi * freq * u + phase)).sum(-1)


# --------------------------------------------------------------------------------------------
# actions
# --------------------------------------------------------------------------------------------
class Timeline:
    """Normalised time of a sample: an active window [s0, s1] with smooth onset and offset."""

    def __init__(self, rng: np.random.Generator, t: int) -> None:
        self.t = t
        self.u = np.linspace(0.0, 1.0, t)
        self.s0 = rng.uniform(0.0, 0.15)
        self.s1 = rng.uniform(0.85, 1.0)
        self.ramp = rng.uniform(0.08, 0.15)

    def envelope(self, s0: float | None = None, s1: float | None = None,
                 ramp: float | None = None) -> np.ndarray:
        s0 = self.s0 if s0 is None else s0
        s1 = self.s1 if s1 is None else s1
        r = self.ramp if ramp is None else ramp
        up = np.clip((self.u - s0) / r, 0, 1)
        down = np.clip((s1 - self.u) / r, 0, 1)
        e = np.minimum(up, down)
        return e * e * (3 - 2 * e)

    def hold(self, s0: float | None = None, ramp: float | None = None) -> np.ndarray:
        """0 -> 1 from s0 on, then stays 1."""
        s0 = self.s0 if s0 is None else s0
        r = self.ramp * 2 if ramp is None else ramp
        e = np.clip((self.u - s0) / r, 0, 1)
        return e * e * (3 - 2 * e)

    def phase(self, cycles: float) -> np.ndarray:
        """Oscillation phase (radians) over the active window."""
        w = np.clip((self.u - self.s0) / (self.s1 - self.s0), 0, 1)
        return 2 * np.pi * cycles * w


def _tile(v: Any, t: int) -> np.ndarray:
    return np.tile(np.asarray(v, dtype=np.float64), (t, 1))


def _wave(m, tl, rng, cfg, slow: bool) -> None:
    b = m.body
    c = cfg["confusion"]
    cycles = 3.0 * b.tempo * rng.uniform(0.8, 1.25)
    height = 0.30
    if slow:
        cycles *= 0.55 + 0.3 * c
        height = 0.30 - 0.12 * (1 - c)
    ph = tl.phase(cycles)
    off = _tile([-0.22, height, 0.12], m.t)
    off[:, 0] += -0.13 * b.amp * np.sin(ph)
    m.wrist_r = ("trunk", off, tl.envelope())


def _raise_both(m, tl, rng, cfg) -> None:
    e = tl.envelope()
    m.wrist_l = ("trunk", _tile([0.06, 0.48 * m.body.amp, 0.05], m.t), e)
    m.wrist_r = ("trunk", _tile([-0.06, 0.48 * m.body.amp, 0.05], m.t), e)


def _punch(m, tl, rng, cfg) -> None:
    b, c = m.body, cfg["confusion"]
    reps = int(rng.integers(2, 4))
    ph = tl.phase(reps)
    pulse = np.sin(ph / 2) ** 4
    guard_r = np.array([0.1, -0.28, 0.22])
    ext = np.array([0.12, -0.05, 0.5 * b.amp])
    off = guard_r + (ext - guard_r) * pulse[:, None]
    m.wrist_r = ("trunk", off, tl.envelope())
    m.wrist_l = ("trunk", _tile([-0.1, -0.28, 0.22], m.t), tl.envelope() * (1 - 0.7 * c))
    m.twist = m.twist + 0.15 * pulse * tl.envelope()


def _point(m, tl, rng, cfg) -> None:
    b = m.body
    e = tl.envelope(ramp=rng.uniform(0.2, 0.35))
    m.wrist_r = ("trunk", _tile([0.08, 0.02, 0.52 * b.amp], m.t), e)


def _kick(m, tl, rng, cfg) -> None:
    b = m.body
    reps = int(rng.integers(1, 3))
    pulse = np.sin(tl.phase(reps) / 2) ** 2 * tl.envelope()
    m.ankle_r = m.ankle_r + pulse[:, None] * np.array([0.0, 0.3, 0.45]) * b.amp
    m.lean = m.lean - 0.15 * pulse
    m.wrist_l = ("trunk", _tile([0.15, -0.35, 0.1], m.t), pulse * 0.6)
    m.wrist_r = ("trunk", _tile([-0.15, -0.35, 0.1], m.t), pulse * 0.6)


def _squat(m, tl, rng, cfg) -> None:
    b, c = m.body, cfg["confusion"]
    reps = (1 + int(rng.integers(1, 3))) if c < 1 else int(rng.integers(1, 3))
    depth = np.sin(tl.phase(reps) / 2) ** 2 * tl.envelope()
    m.pelvis[:, 1] -= 0.38 * b.amp * depth
    m.pelvis[:, 2] -= 0.08 * depth
    m.lean = m.lean + 0.35 * depth
    arms = _tile([0.0, -0.05, 0.45], m.t)
    m.wrist_l = ("trunk", arms + [-0.05, 0, 0], depth)
    m.wrist_r = ("trunk", arms + [0.05, 0, 0], depth)


def _sit(m, tl, rng, cfg) -> None:
    down = tl.hold(tl.s0, ramp=rng.uniform(0.3, 0.5))
    lean_peak = np.exp(-((tl.u - (tl.s0 + 0.2)) / 0.12) ** 2)
    m.pelvis[:, 1] -= 0.42 * down
    m.pelvis[:, 2] -= 0.3 * down
    m.lean = m.lean + 0.45 * lean_peak + 0.1 * down
    m.wrist_l = ("trunk", _tile([0.05, -0.45, 0.3], m.t), down * 0.7)
    m.wrist_r = ("trunk", _tile([-0.05, -0.45, 0.3], m.t), down * 0.7)


def _bow(m, tl, rng, cfg) -> None:
    e = tl.envelope(ramp=rng.uniform(0.2, 0.35))
    m.lean = m.lean + 0.75 * m.body.amp * e
    m.pelvis[:, 2] -= 0.08 * e


def _jump(m, tl, rng, cfg) -> None:
    b = m.body
    reps = int(rng.integers(1, 4))
    ph = tl.phase(reps)
    s = np.sin(ph)
    crouch = np.clip(-s, 0, None) * tl.envelope()
    air = np.clip(s, 0, None) ** 1.5 * tl.envelope()
    m.pelvis[:, 1] += -0.18 * crouch + 0.25 * b.amp * air
    m.ankles_follow_pelvis = (air > 0.05).astype(float) * air / np.maximum(air.max(), 1e-6)
    m.lean = m.lean + 0.25 * crouch
    arms = _tile([0.0, 0.3, 0.15], m.t)
    m.wrist_l = ("trunk", arms + [0.1, 0, 0], air)
    m.wrist_r = ("trunk", arms - [0.1, 0, 0], air)


def _hands_front(m: Motion, gap: np.ndarray, circle: np.ndarray | None, e: np.ndarray) -> None:
    b = m.body
    center = np.array([0.0, b.shoulder_y - 0.18, 0.33])
    cl = _tile(center, m.t)
    cr = cl.copy()
    cl[:, 0] += gap / 2
    cr[:, 0] -= gap / 2
    if circle is not None:
        cl[:, 1:] += circle
        cr[:, 1:] -= circle
    m.wrist_l = ("body", cl, e)
    m.wrist_r = ("body", cr, e)


def _clap(m, tl, rng, cfg) -> None:
    c = cfg["confusion"]
    cycles = 4 * m.body.tempo * rng.uniform(0.8, 1.25)
    g = 0.5 + 0.5 * np.cos(tl.phase(cycles))
    _hands_front(m, 0.06 + 0.3 * (1 - 0.6 * c) * m.body.amp * g, None, tl.envelope())


def _rub(m, tl, rng, cfg) -> None:
    cycles = 4 * m.body.tempo * rng.uniform(0.8, 1.25)
    ph = tl.phase(cycles)
    circ = 0.04 * np.stack([np.sin(ph), np.cos(ph)], -1)
    _hands_front(m, np.full(m.t, 0.07), circ, tl.envelope())


def _walk(m, tl, rng, cfg) -> None:
    b = m.body
    steps = 3 * b.tempo * rng.uniform(0.8, 1.25)
    ph = tl.phase(steps)
    e = tl.envelope()
    lift_l = np.clip(np.sin(ph), 0, None) * e
    lift_r = np.clip(-np.sin(ph), 0, None) * e
    m.ankle_l = m.ankle_l + lift_l[:, None] * np.array([0.0, 0.22, 0.12]) * b.amp
    m.ankle_r = m.ankle_r + lift_r[:, None] * np.array([0.0, 0.22, 0.12]) * b.amp
    m.pelvis[:, 1] += 0.02 * np.abs(np.sin(ph)) * e
    swing = 0.18 * np.sin(ph)
    hang = np.array([0.04, -b.arm * 0.93, 0.05])
    off_l = _tile(hang, m.t)
    off_r = _tile(hang * [-1, 1, 1], m.t)
    off_l[:, 2] -= swing
    off_r[:, 2] += swing
    m.wrist_l = ("trunk", off_l, e)
    m.wrist_r = ("trunk", off_r, e)


def _meet_point(m: Motion, dist: float, height: float) -> np.ndarray:
    """Absolute body-frame point midway to a partner facing this person at ``dist``."""
    return _tile([0.0, height, dist / 2], m.t)


def _handshake(ms, tl, rng, cfg, dist) -> None:
    cycles = 3 * rng.uniform(0.8, 1.25)
    h = 0.5 * (ms[0].body.shoulder_y + ms[1].body.shoulder_y) - 0.3
    for k, m in enumerate(ms):
        e = tl.envelope()
        p = _meet_point(m, dist, h)
        p[:, 1] += 0.05 * np.sin(tl.phase(cycles)) * e
        p[:, 0] += 0.03 * (1 if k == 0 else -1)  # right hands side by side
        m.wrist_r = ("body", p, e)
        m.lean = m.lean + 0.1 * e


def _give(ms, tl, rng, cfg, dist) -> None:
    c = cfg["confusion"]
    h = 0.5 * (ms[0].body.shoulder_y + ms[1].body.shoulder_y) - 0.3 - 0.1 * (1 - c)
    delay = rng.uniform(0.05, 0.2)
    for k, m in enumerate(ms):
        s0 = tl.s0 + (delay if k == 1 else 0.0)
        e = tl.envelope(s0=s0, s1=tl.s1 - (0 if k == 1 else delay))
        p = _meet_point(m, dist, h)
        p[:, 0] += 0.03 * (1 if k == 0 else -1)
        m.wrist_r = ("body", p, e)
        m.lean = m.lean + 0.12 * e


def _push(ms, tl, rng, cfg, dist) -> None:
    a, b = ms
    hit = tl.s0 + 0.45 * (tl.s1 - tl.s0)
    e = tl.envelope(s1=min(hit + 0.25, 1.0), ramp=0.12)
    reach = _tile([0.0, a.body.shoulder_y - 0.12, dist - 0.15], a.t)
    a.wrist_l = ("body", reach + [0.15, 0, 0], e)
    a.wrist_r = ("body", reach - [0.15, 0, 0], e)
    a.lean = a.lean + 0.25 * e
    a.pelvis[:, 2] += 0.15 * e
    back = np.clip((tl.u - hit) / 0.15, 0, 1)
    back = back * back * (3 - 2 * back)
    b.pelvis[:, 2] -= 0.4 * back
    b.ankle_l[:, 2] -= 0.35 * back
    b.ankle_r[:, 2] -= 0.4 * back
    b.lean = b.lean - 0.3 * np.exp(-((tl.u - hit - 0.08) / 0.08) ** 2)
    b.wrist_l = ("trunk", _tile([0.2, -0.25, 0.15], b.t), back * 0.6)
    b.wrist_r = ("trunk", _tile([-0.2, -0.25, 0.15], b.t), back * 0.6)


_SINGLE: dict[int, Callable] = {
    0: lambda m, tl, r, c: _wave(m, tl, r, c, slow=False),
    1: lambda m, tl, r, c: _wave(m, tl, r, c, slow=True),
    2: _raise_both, 3: _punch, 4: _point, 5: _kick, 6: _squat, 7: _sit, 8: _bow, 9: _jump,
    10: _clap, 11: _rub, 12: _walk,
}
_DUAL: dict[int, Callable] = {13: _handshake, 14: _push, 15: _give}


def generate_sample(label: int, subject: int, partner: int, index: int, seed: int = 0,
                    min_len: int = 40, max_len: int = 120, noise: float = 0.015,
                    confusion: float = 0.5, motion_jitter: float = 0.03,
                    view_range: float = 60.0) -> tuple[np.ndarray, float]:
    """One raw sample (M, T, 25, 3) in camera space (metres) and its yaw (degrees)."""
    rng = np.random.default_rng([seed, index])
    t = int(rng.integers(min_len, max_len + 1))
    cfg = {"confusion": float(confusion)}
    tl = Timeline(rng, t)
    body = _body(subject, seed)
    if label in _DUAL:
        other = _body(partner, seed)
        ms = [Motion(body, t), Motion(other, t)]
        dist = rng.uniform(0.95, 1.25)
        _DUAL[label](ms, tl, rng, cfg, dist)
        poses = [_pose(ms[0], rng, motion_jitter), _pose(ms[1], rng, motion_jitter)]
        # the partner stands at ``dist`` in front, facing the actor: rotate 180 deg about y
        poses[1] = poses[1] * np.array([-1.0, 1.0, -1.0]) + np.array([0.0, 0.0, dist])
        x = np.stack(poses)
    else:
        m = Motion(body, t)
        _SINGLE[label](m, tl, rng, cfg)
        x = _pose(m, rng, motion_jitter)[None]
    # camera: the actor faces the camera (body z -> camera -z), then yaw, tilt and placement
    yaw = rng.uniform(-view_range, view_range)
    tilt = np.deg2rad(rng.uniform(-10, 10))
    a = np.deg2rad(yaw) + np.pi
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    place = np.array([rng.uniform(-0.5, 0.5), -rng.uniform(0.6, 1.0), rng.uniform(2.5, 3.5)])
    x = x @ (rx @ ry).T + place
    x = x + rng.normal(0.0, noise, size=x.shape)
    return x.astype(np.float32), float(yaw)


class SyntheticSource(Source):
    """The embedded default data set (see the module docstring).

    ``train_per_class`` / ``test_per_class`` samples of each of ``num_classes`` classes
    (the first classes of :data:`CLASS_NAMES`, at most 16), split ``xsub``.
    """

    name = "synthetic"
    version = 1

    def __init__(self, num_classes: int = 16, train_per_class: int = 40, test_per_class: int = 15,
                 seed: int = 0, min_len: int = 40, max_len: int = 120, noise: float = 0.015,
                 confusion: float = 0.5, motion_jitter: float = 0.03,
                 view_range: float = 60.0) -> None:
        if not 2 <= num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in 2..{len(CLASS_NAMES)}, got {num_classes}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.num_classes, self.seed = int(num_classes), int(seed)
        self.train_per_class, self.test_per_class = int(train_per_class), int(test_per_class)
        self.min_len, self.max_len = int(min_len), int(max_len)
        self.noise, self.confusion = float(noise), float(confusion)
        self.motion_jitter, self.view_range = float(motion_jitter), float(view_range)

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "num_classes", "train_per_class", "test_per_class", "seed", "min_len", "max_len",
            "noise", "confusion", "motion_jitter", "view_range")}

    def samples(self):
        """Yield (name, keypoints (M, T, 25, 3) pre-normalised, label, fields, part)."""
        kw = {k: getattr(self, k) for k in ("min_len", "max_len", "noise", "confusion",
                                            "motion_jitter", "view_range")}
        for part, subjects, per_class in (("train", TRAIN_SUBJECTS, self.train_per_class),
                                          ("test", TEST_SUBJECTS, self.test_per_class)):
            for label in range(self.num_classes):
                for k in range(per_class):
                    subject = subjects[k % len(subjects)]
                    partner = subjects[(k * 7 + 3 + label) % len(subjects)]
                    if partner == subject:
                        partner = subjects[(subjects.index(subject) + 1) % len(subjects)]
                    index = (label * 100_000 + k) * 2 + (part == "test")
                    x, yaw = generate_sample(label, subject, partner, index, self.seed, **kw)
                    x = pre_normalize_3d(x, "ntu25")
                    name = f"S{subject:03d}A{label:03d}K{k:04d}"
                    yield name, x, label, {"subject": subject, "yaw": round(yaw, 2)}, part

    def write(self, out_dir: Path, key: str) -> None:
        parts: dict[str, list[int]] = {"train": [], "test": []}
        names = list(CLASS_NAMES[:self.num_classes])
        with StoreWriter(out_dir, "ntu25", 3, class_names=names, source=key, prenormalize="3d") as w:
            for name, x, label, fields, part in self.samples():
                parts[part].append(w.add(name, x, label, **fields))
            for part, idx in parts.items():
                w.set_split("xsub", part, idx)
