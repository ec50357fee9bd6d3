"""Normalisation (PYSKL PreNormalize3D, 2D, the test-time clip) and the augmentations."""

import dataclasses

import numpy as np
import pytest
import torch

from last_lite.data.normalize import (normalize_2d, normalize_clip, pre_normalize_3d,
                                      resize_frames, uniform_indices)
from last_lite.data.sources.synthetic import generate_sample
from last_lite.data.transforms import (GaussianNoise, RandomCropResize, RandomRotation, RandomScale,
                                       RandomShear, build_transform)
from last_lite.models.graph import get_layout


# ---- a literal copy of PYSKL's PreNormalize3D (einsum and all) as the reference --------------
def _pyskl_prenorm(skeleton, zaxis=(0, 1), xaxis=(8, 4)):
    def unit_vector(v):
        return v / np.linalg.norm(v)

    def angle_between(v1, v2):
        if np.abs(v1).sum() < 1e-6 or np.abs(v2).sum() < 1e-6:
            return 0
        return np.arccos(np.clip(np.dot(unit_vector(v1), unit_vector(v2)), -1.0, 1.0))

    def rotation_matrix(axis, theta):
        if np.abs(axis).sum() < 1e-6 or np.abs(theta) < 1e-6:
            return np.eye(3)
        axis = np.asarray(axis)
        axis = axis / np.sqrt(np.dot(axis, axis))
        a = np.cos(theta / 2.0)
        b, c, d = -axis * np.sin(theta / 2.0)
        aa, bb, cc, dd = a * a, b * b, c * c, d * d
        bc, ad, ac, ab, bd, cd = b * c, a * d, a * c, a * b, b * d, c * d
        return np.array([[aa + bb - cc - dd, 2 * (bc + ad), 2 * (bd - ac)],
                         [2 * (bc - ad), aa + cc - bb - dd, 2 * (cd + ab)],
                         [2 * (bd + ac), 2 * (cd - ab), aa + dd - bb - cc]])

    M, T, V, C = skeleton.shape
    index0 = [i for i in range(T) if not np.all(np.isclose(skeleton[0, i], 0))]
    if M == 2:
        index1 = [i for i in range(T) if not np.all(np.isclose(skeleton[1, i], 0))]
        if len(index0) < len(index1):
            skeleton = skeleton[:, np.array(index1)]
            skeleton = skeleton[[1, 0]]
        else:
            skeleton = skeleton[:, np.array(index0)]
    else:
        skeleton = skeleton[:, np.array(index0)]
    main_body_center = skeleton[0, 0, 1].copy()
    mask = ((skeleton != 0).sum(-1) > 0)[..., None]
    skeleton = (skeleton - main_body_center) * mask
    joint_bottom, joint_top = skeleton[0, 0, zaxis[0]], skeleton[0, 0, zaxis[1]]
    axis = np.cross(joint_top - joint_bottom, [0, 0, 1])
    angle = angle_between(joint_top - joint_bottom, [0, 0, 1])
    skeleton = np.einsum('abcd,kd->abck', skeleton, rotation_matrix(axis, angle))
    joint_rshoulder, joint_lshoulder = skeleton[0, 0, xaxis[0]], skeleton[0, 0, xaxis[1]]
    axis = np.cross(joint_rshoulder - joint_lshoulder, [1, 0, 0])
    angle = angle_between(joint_rshoulder - joint_lshoulder, [1, 0, 0])
    return np.einsum('abcd,kd->abck', skeleton, rotation_matrix(axis, angle))


def _raw(label=13, index=0):
    x, _ = generate_sample(label, 1, 2, index, seed=0)
    return x.astype(np.float64)


def test_pre_normalize_matches_pyskl():
    for label, index in ((13, 0), (0, 1), (14, 2)):
        x = _raw(label, index)
        if x.shape[0] == 2:
            x[1, :10] = 0  # second person absent at first
        x[0, -5:] = 0  # main body absent at the end
        ours = pre_normalize_3d(x, "ntu25")
        ref = _pyskl_prenorm(x)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_pre_normalize_swaps_persons_and_drops_absent_frames():
    x = _raw(13)
    x[0, :20] = 0  # person 1 present longer -> becomes the main body
    out = pre_normalize_3d(x, "ntu25")
    assert out.shape[1] == x.shape[1]  # person 1 present in every frame
    np.testing.assert_allclose(out, _pyskl_prenorm(x), atol=2e-5)
    assert np.abs(out[0]).sum(axis=(1, 2)).min() > 0  # main body present throughout
    y = _raw(0)
    y[0, :7] = 0
    assert pre_normalize_3d(y, "ntu25").shape[1] == y.shape[1] - 7


def test_pre_normalize_geometry_and_zeros():
    x = _raw(14, 3)
    x[1, 30:, :] = 0          # second person leaves
    x[0, 5, 17] = 0           # a missing joint
    out = pre_normalize_3d(x, "ntu25")
    lay = get_layout("ntu25")
    np.testing.assert_allclose(out[0, 0, lay.norm_center], 0, atol=1e-6)
    right, left = lay.norm_xaxis
    sh = out[0, 0, right] - out[0, 0, left]
    assert sh[0] > 0 and np.allclose(sh[1:], 0, atol=1e-5)         # shoulders along +x
    b, t = lay.norm_zaxis
    spine = out[0, 0, t] - out[0, 0, b]
    assert spine[2] / np.linalg.norm(spine) > 0.95                # spine close to +z
    assert np.all(out[1, 30:] == 0) and np.all(out[0, 5, 17] == 0)  # zeros preserved
    # without the shoulder step the spine lies exactly along +z
    z_only = dataclasses.replace(lay, norm_xaxis=None)
    out_z = pre_normalize_3d(x, z_only)
    spine = out_z[0, 0, t] - out_z[0, 0, b]
    assert spine[2] > 0 and np.allclose(spine[:2], 0, atol=1e-5)
    # bone lengths are unchanged (a rigid motion)
    e = np.array(lay.edges)
    before = np.linalg.norm(x[0, :, e[:, 0]] - x[0, :, e[:, 1]], axis=-1)
    after = np.linalg.norm(out[0, :, e[:, 0]] - out[0, :, e[:, 1]], axis=-1)
    keep = (x[0, :, e[:, 0]] != 0).any(-1) & (x[0, :, e[:, 1]] != 0).any(-1)
    np.testing.assert_allclose(after[keep], before[keep], atol=1e-4)
    assert np.all(pre_normalize_3d(np.zeros((2, 5, 25, 3)), "ntu25") == 0)


def test_pre_normalize_keeps_a_score_channel_and_reads_presence_from_coordinates_only():
    x = _raw(15)
    rng = np.random.default_rng(15)
    score = rng.uniform(0.5, 1.0, x.shape[:-1] + (1,))
    x[0, 5, 17] = 0  # a missed joint: the tracker still reports a score for it
    x[:, :3] = 0     # frames without a body, scores alone
    out = pre_normalize_3d(np.concatenate([x, score], axis=-1), "ntu25")
    reference = pre_normalize_3d(x, "ntu25")
    assert out.shape[1] == reference.shape[1] == x.shape[1] - 3
    np.testing.assert_allclose(out[..., :3], reference, atol=1e-6)
    present = (x[:, 3:] != 0).any(-1)
    np.testing.assert_allclose(out[..., 3], np.where(present, score[:, 3:, :, 0], 0), atol=1e-6)
    assert out[0, 2, 17, 3] == 0  # the missed joint (frame 5 before the drop)


def test_normalize_2d():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(100, 400, size=(1, 20, 17, 2)),
                        rng.uniform(0.2, 1, size=(1, 20, 17, 1))], -1)
    x = np.concatenate([x, np.zeros_like(x)])
    x[0, 3, 5] = 0
    out = normalize_2d(x, "coco17", coord_dims=2)
    c = get_layout("coco17").norm_center
    pres = (x[0, :, c, :2] != 0).any(-1)
    np.testing.assert_allclose(out[0, pres, c, :2].mean(0), 0, atol=1e-5)
    assert 0.5 < np.median(np.ptp(out[0, :, :, :2], axis=1).max(-1)) < 1.5  # body size ~ 1
    np.testing.assert_array_equal(out[..., 2], x[..., 2].astype(np.float32))  # score untouched
    assert np.all(out[1] == 0) and np.all(out[0, 3, 5] == 0)


def test_resize_matches_torch_bilinear():
    rng = np.random.default_rng(1)
    for t, size in ((37, 64), (100, 64), (64, 64), (1, 16)):
        x = rng.normal(size=(2, t, 5, 3)).astype(np.float32)
        ours = resize_frames(x, size)
        d = torch.from_numpy(x).permute(0, 2, 3, 1).reshape(1, 1, -1, t)
        ref = torch.nn.functional.interpolate(d, size=(d.shape[2], size), mode="bilinear",
                                              align_corners=False)
        ref = ref.reshape(2, 5, 3, size).permute(0, 3, 1, 2).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_normalize_clip_is_the_test_transform():
    x = pre_normalize_3d(_raw(0, 5), "ntu25")
    padded = np.concatenate([x, np.zeros((1, 9, 25, 3), np.float32)], axis=1)  # trailing padding
    a = normalize_clip(padded, "ntu25", 64, max_persons=2)
    b = normalize_clip(x, "ntu25", 64, max_persons=2)
    assert a.shape == (2, 64, 25, 3) and np.all(a[1] == 0)
    np.testing.assert_array_equal(a, b)  # trailing zero frames do not matter
    t = build_transform(64, train=False, max_persons=2)
    np.testing.assert_array_equal(t(x, np.random.default_rng(0)), a)
    raw = _raw(0, 5)
    np.testing.assert_array_equal(normalize_clip(raw, "ntu25", 64, prenormalize="3d"), a)
    u = normalize_clip(x, "ntu25", 32, mode="uniform", max_persons=1)
    np.testing.assert_array_equal(u[0], x[0, uniform_indices(x.shape[1], 32)])
    clips = [normalize_clip(x, "ntu25", 64, crop_ratio=0.7, num_clips=3, clip_index=j) for j in range(3)]
    assert not np.array_equal(clips[0], clips[2])


def test_uniform_indices():
    idx = uniform_indices(100, 10)
    assert idx.tolist() == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert uniform_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    for j in range(4):
        i = uniform_indices(57, 16, num_clips=4, clip_index=j)
        assert (np.diff(i) >= 0).all() and i.min() >= 0 and i.max() < 57


def test_random_crop_resize_respects_interval():
    t = 200
    ramp = np.broadcast_to(np.arange(t, dtype=np.float32)[None, :, None, None] + 1, (1, t, 2, 3)).copy()
    crop = RandomCropResize(50, p_interval=(0.5, 1.0), min_crop_len=0)
    spans = []
    for s in range(30):
        out = crop(ramp, np.random.default_rng(s))
        assert out.shape == (1, 50, 2, 3)
        assert (np.diff(out[0, :, 0, 0]) > 0).all()
        spans.append(out[0, -1, 0, 0] - out[0, 0, 0, 0])
    spans = np.array(spans)
    assert spans.min() >= 0.5 * t * 0.9 and spans.max() <= t and spans.std() > 5
    # CTR-GCN's lower bound: never fewer frames than min_crop_len (here all of a short sequence)
    short = ramp[:, :40]
    out = RandomCropResize(64)(short, np.random.default_rng(0))
    np.testing.assert_allclose(out, resize_frames(short, 64))


def test_train_pipeline_shapes_determinism_and_zeros():
    x = pre_normalize_3d(_raw(3, 7), "ntu25")  # one person
    x[0, :, 7] = 0  # an absent joint
    t = build_transform(48, train=True, max_persons=2, rotate=0.3, scale=0.1, shear=0.2,
                        noise_std=0.01)
    a = t(x, np.random.default_rng(3))
    b = t(x, np.random.default_rng(3))
    c = t(x, np.random.default_rng(4))
    assert a.shape == (2, 48, 25, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a[1] == 0) and np.all(a[0, :, 7] == 0)


def test_spatial_transforms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 10, 25, 3)).astype(np.float32)
    x[1] = 0
    rot = RandomRotation(0.5)(x, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(rot[0], axis=-1), np.linalg.norm(x[0], axis=-1), rtol=1e-5)
    assert not np.allclose(rot, x)
    for t in (RandomScale(0.2), RandomShear(0.3), GaussianNoise(0.05)):
        out = t(x, np.random.default_rng(2))
        assert out.shape == x.shape and np.all(out[1] == 0) and not np.allclose(out[0], x[0])
    x2 = np.concatenate([rng.normal(size=(1, 10, 17, 2)), rng.uniform(size=(1, 10, 17, 1))], -1)
    out = RandomRotation(0.5, coord_dims=2)(x2, np.random.default_rng(0))
    np.testing.assert_array_equal(out[..., 2], x2[..., 2].astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(out[..., :2], axis=-1),
                               np.linalg.norm(x2[..., :2], axis=-1), rtol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError):
        build_transform(16, temporal="nope")
    with pytest.raises(ValueError):
        normalize_clip(np.ones((1, 4, 25, 3)), "ntu25", 8, mode="nope")


# ---- CTR-GCN's NW-UCLA loader: random-with-replacement sampling, linspace, per-axis min-max ------
def _camera_clip(frames: int = 37, persons: int = 1) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(persons, frames, 20, 3)).astype(np.float32) + np.float32([0.5, -1.0, 3.0])
    x[:, :, 7] = 0  # an absent joint
    return x


def test_minmax_maps_every_axis_onto_minus_one_one_and_keeps_absent_joints_zero():
    from last_lite.data.normalize import joint_mask, minmax_normalize

    x = _camera_clip()
    out = minmax_normalize(x)
    present = joint_mask(x) > 0
    values = out[present]
    np.testing.assert_allclose(values.min(axis=0), -1, atol=1e-6)
    np.testing.assert_allclose(values.max(axis=0), 1, atol=1e-6)
    assert np.all(out[:, :, 7] == 0)
    # translation and isotropic scale (CTR-GCN's centring and U(0.5, 1.5) scaling) change nothing
    moved = np.where(present[..., None], x * 1.37 + np.float32([4, -2, 1]), 0)
    np.testing.assert_allclose(minmax_normalize(moved), out, atol=1e-5)
    flat = x.copy()
    flat[..., 2] = np.where(present, 2.0, 0)  # an axis without extent maps to 0
    assert np.all(minmax_normalize(flat)[..., 2] == 0)
    assert np.all(minmax_normalize(np.zeros((1, 4, 20, 3), np.float32)) == 0)


def test_random_sample_draws_sorted_frames_with_replacement_and_linspace_tests():
    from last_lite.data.normalize import linspace_indices
    from last_lite.data.transforms import LinspaceSample, RandomSample

    x = np.arange(10, dtype=np.float32)[None, :, None, None] + np.ones((1, 10, 20, 3), np.float32)
    padded = np.concatenate([x, np.zeros((1, 5, 20, 3), np.float32)], axis=1)
    out = RandomSample(52)(padded, np.random.default_rng(0))
    frames = out[0, :, 0, 0] - 1
    assert out.shape == (1, 52, 20, 3) and np.all(np.diff(frames) >= 0)
    assert set(frames.astype(int)) <= set(range(10)) and len(set(frames)) > 5  # padding never drawn
    np.testing.assert_array_equal(linspace_indices(10, 5), [0, 2, 4, 6, 9])
    np.testing.assert_array_equal(LinspaceSample(5)(padded)[0, :, 0, 0] - 1, [0, 2, 4, 6, 9])


def test_field_recipe_test_clip_is_the_runtime_clip():
    """The test pipeline of temporal=sample + spatial_norm=minmax and normalize_clip (what the
    runtime runs) give identical inputs."""
    x = _camera_clip()
    kw = dict(temporal="sample", spatial_norm="minmax")
    t = build_transform(52, train=False, max_persons=1, **kw)
    a = t(x, np.random.default_rng(0))
    b = normalize_clip(x, "ucla20", 52, max_persons=1, mode="sample", spatial_norm="minmax")
    np.testing.assert_array_equal(a, b)
    train = build_transform(52, train=True, max_persons=1, rotate=[1.0472, 1.0472, 0], **kw)
    y = train(x, np.random.default_rng(1))
    assert y.shape == (1, 52, 20, 3) and np.abs(y).max() <= 1 + 1e-6 and np.all(y[:, :, 7] == 0)
    assert not np.allclose(y, train(x, np.random.default_rng(2)))
    with pytest.raises(ValueError, match="spatial_norm"):
        build_transform(52, spatial_norm="zscore")
    with pytest.raises(ValueError, match="mode"):
        normalize_clip(x, "ucla20", 52, mode="sampled")


def test_epoch_sampler_repeats_every_sample_and_replays_by_epoch():
    from last_lite.data.datamodule import EpochShuffleSampler

    sampler = EpochShuffleSampler(7, seed=3, repeat=5)
    sampler.set_epoch(2)
    order = list(sampler)
    assert len(order) == len(sampler) == 35 and sorted(order) == sorted(list(range(7)) * 5)
    assert order == list(sampler) and order != list(range(7)) * 5
    sampler.set_epoch(3)
    assert list(sampler) != order
    with pytest.raises(ValueError, match="repeat"):
        EpochShuffleSampler(7, repeat=0)
