"""MaskCLR masks (ratio, whole regions, whole frame blocks) and the batch view augmentation."""

import numpy as np
import pytest
import torch

from last_lite.models.graph import get_layout
from last_lite.training.path_c.masking import (apply_mask, augment_view, fold_mask, generate_masks,
                                        present_persons, region_units)

T, BLOCK = 64, 8


def _masks(layout, strategies, ratio, batch=256, seed=0, block_len=BLOCK, frames=T):
    lay = get_layout(layout)
    groups = region_units(lay) if "region" in strategies else None
    g = torch.Generator().manual_seed(seed)
    return generate_masks(batch, frames, lay.num_joints, ratio, strategies, groups, block_len, generator=g)


def _interior_runs(flags: np.ndarray) -> list[int]:
    """Lengths of the runs of True that touch neither end of ``flags``."""
    runs, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if start > 0 and i < len(flags):
                runs.append(i - start)
            start = None
    return runs


@pytest.mark.parametrize("layout", ["ntu25", "ucla20"])
@pytest.mark.parametrize("strategies", [["region"], ["temporal"], ["region", "temporal"], []])
@pytest.mark.parametrize("ratio", [0.5, 0.75, (0.5, 0.75)])
def test_masks_hit_the_requested_ratio_on_average(layout, strategies, ratio):
    m = _masks(layout, strategies, ratio)
    assert m.dtype == torch.bool and m.shape == (256, T, get_layout(layout).num_joints)
    target = ratio if isinstance(ratio, float) else sum(ratio) / 2
    assert abs(m.float().mean().item() - target) < 0.05
    if strategies == ["region", "temporal"] or not strategies:  # fine units: near per sample too
        lo, hi = (ratio, ratio) if isinstance(ratio, float) else ratio
        per_sample = m.float().mean(dim=(1, 2))
        assert (per_sample > lo - 0.06).all() and (per_sample < hi + 0.06).all()


def test_region_masks_hide_whole_regions_over_the_whole_clip():
    lay = get_layout("ntu25")
    m = _masks("ntu25", ["region"], (0.5, 0.75), batch=64).numpy()
    assert (m == m[:, :1]).all()                                  # constant over frames
    for joints in lay.regions.values():
        part = m[:, 0, list(joints)]
        assert (part == part[:, :1]).all()                        # all of a region or none


def test_temporal_masks_hide_whole_frame_blocks():
    m = _masks("ntu25", ["temporal"], (0.5, 0.75), batch=64).numpy()
    assert (m == m[:, :, :1]).all()                               # every joint of a frame
    runs = [r for s in m[:, :, 0] for r in _interior_runs(s)]
    assert runs and all(r % BLOCK == 0 for r in runs)


def test_combined_masks_hide_regions_over_frame_blocks():
    lay = get_layout("ucla20")
    m = _masks("ucla20", ["region", "temporal"], 0.6, batch=64).numpy()
    for joints in lay.regions.values():
        part = m[:, :, list(joints)]
        assert (part == part[:, :, :1]).all()                     # a region at once, per frame
        runs = [r for s in part[:, :, 0] for r in _interior_runs(s)]
        assert all(r % BLOCK == 0 for r in runs)
    assert not (m == m[:, :1]).all()                              # not whole-clip regions


def test_masks_are_reproducible_and_follow_the_generator():
    a = _masks("ntu25", ["region", "temporal"], 0.6, seed=1)
    assert torch.equal(a, _masks("ntu25", ["region", "temporal"], 0.6, seed=1))
    assert not torch.equal(a, _masks("ntu25", ["region", "temporal"], 0.6, seed=2))


def test_region_masking_needs_regions_and_known_strategies():
    bare = get_layout({"edges": [[0, 1], [1, 2], [2, 3]], "num_joints": 4})
    with pytest.raises(ValueError, match="regions"):
        region_units(bare)
    with pytest.raises(ValueError, match="strategies"):
        generate_masks(2, 8, 4, 0.5, ["joints"])
    with pytest.raises(ValueError, match="mask_ratio"):
        generate_masks(2, 8, 4, 1.5, [])


def test_fold_mask_matches_the_models_person_folding_and_apply_mask_fills():
    n, m, t, v = 3, 2, 4, 5
    folded = torch.rand(n * m, t, v) > 0.5
    mask = fold_mask(folded, m)
    assert mask.shape == (n, t, v, m)
    assert torch.equal(mask[1, :, :, 1], folded[1 * m + 1])
    x = torch.randn(n, 3, t, v, m)
    token = torch.tensor([7.0, 8.0, 9.0])
    out = apply_mask(x, mask, token)
    assert torch.equal(out[:, 1][mask], torch.full_like(out[:, 1][mask], 8.0))
    assert torch.equal(out.permute(0, 2, 3, 4, 1)[~mask], x.permute(0, 2, 3, 4, 1)[~mask])
    assert torch.equal(apply_mask(x, mask, 0.0).permute(0, 2, 3, 4, 1)[mask],
                       torch.zeros(int(mask.sum()), 3))


def test_augment_view_rotates_scales_jitters_and_keeps_absent_joints_zero():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 5, 2)
    x[:2, ..., 1] = 0                                             # absent second person
    clean, noisy = augment_view(x, rotate=0.5, scale=0.0, noise_std=0.0)
    assert clean is noisy
    torch.testing.assert_close(clean.norm(dim=1), x.norm(dim=1))  # rotation only
    assert not torch.allclose(clean, x)
    clean, noisy = augment_view(x, rotate=0.3, scale=0.2, noise_std=0.05)
    assert (clean[:2, ..., 1] == 0).all() and (noisy[:2, ..., 1] == 0).all()
    assert 0.02 < (noisy - clean)[2:].std() < 0.08
    assert present_persons(x).tolist() == [[True, False]] * 2 + [[True, True]] * 2
    scored = torch.randn(2, 3, 8, 5, 1)                           # 2D + score channel
    c2, _ = augment_view(scored, coord_dims=2, noise_std=0.0)
    assert torch.equal(c2[:, 2], scored[:, 2])
    torch.testing.assert_close(c2[:, :2].norm(dim=1), scored[:, :2].norm(dim=1), rtol=0.25, atol=0)
