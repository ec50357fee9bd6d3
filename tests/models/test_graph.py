"""Layouts, the spatial partition and normalisation (numpy only)."""

import subprocess
import sys

import numpy as np
import pytest

from last_lite.models.graph import (LAYOUTS, REGION_NAMES, custom_layout, get_layout, graph_adjacency,
                                    hop_distance, normalize_symmetric, spatial_partition)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_is_a_tree_rooted_at_the_centre_with_full_region_cover(name):
    layout = LAYOUTS[name]
    parents = layout.parents
    assert parents[layout.center] == layout.center
    dist = hop_distance(layout.num_joints, layout.edges)[layout.center]
    for v in range(layout.num_joints):
        if v != layout.center:
            assert dist[parents[v]] == dist[v] - 1
    covered = sorted(j for r in REGION_NAMES for j in layout.regions.get(r, ()))
    assert covered == list(range(layout.num_joints))


def test_ntu25_centre_and_bones():
    ntu = LAYOUTS["ntu25"]
    assert ntu.center == 20 and len(ntu.edges) == 24
    assert ntu.parents[3] == 2 and ntu.parents[0] == 1 and ntu.parents[1] == 20
    assert LAYOUTS["ucla20"].center == 2 and LAYOUTS["kinect20"] is LAYOUTS["ucla20"]


def test_partition_subsets_for_a_chain():
    # Chain 0-1-2-3 with centre 1: hop 1 pairs split by which end is nearer the centre.
    layout = custom_layout([[0, 1], [1, 2], [2, 3]], center=1)
    a = spatial_partition(layout, max_hop=2)
    assert a.shape == (5, 4, 4)
    np.testing.assert_array_equal(a[0], np.eye(4))
    # j=2 (distance 1) feeds i=3 (distance 2): j nearer -> subset 2; j=3 feeds i=2 -> subset 1.
    assert a[2, 2, 3] == 1 and a[1, 3, 2] == 1 and a[1, 2, 3] == 0
    # Hop 2 pairs: (0, 2): both at distance 1 -> "same or farther" for both directions.
    assert a[3, 0, 2] == 1 and a[3, 2, 0] == 1
    # Every pair at distance <= 2 lands in exactly one subset.
    total = a.sum(0)
    dist = hop_distance(4, layout.edges)
    np.testing.assert_array_equal(total, (dist <= 2).astype(np.float32))


def test_distance_to_centre_is_not_capped():
    # Joints 3 and 4 lie 3 and 4 hops from the centre: 4 -> 3 is "nearer", not lumped together.
    layout = custom_layout([[0, 1], [1, 2], [2, 3], [3, 4]], center=0)
    a = spatial_partition(layout, max_hop=1)
    assert a[2, 3, 4] == 1 and a[1, 4, 3] == 1


def test_whole_graph_symmetric_normalisation():
    a = spatial_partition(LAYOUTS["ntu25"], 2)
    n = normalize_symmetric(a)
    degree = a.sum(axis=(0, 2))
    i, j = 20, 2
    assert n[1, j, i] == pytest.approx(a[1, j, i] / np.sqrt(degree[j] * degree[i]))
    np.testing.assert_allclose(graph_adjacency(LAYOUTS["ntu25"], 2), n)


def test_custom_layout_centre_and_errors():
    assert custom_layout([[0, 1], [1, 2], [2, 3], [3, 4]]).center == 2
    two_arms = custom_layout([[0, 1], [1, 2], [3, 4], [4, 5]])  # two parts, no torso (NATOPS-like)
    assert two_arms.parts == 2 and two_arms.center == 1
    assert two_arms.parents.tolist() == [1, 1, 1, 4, 4, 4]  # each part rooted at its own centre
    assert np.isfinite(graph_adjacency(two_arms, 2)).all()
    assert custom_layout([[0, 1], [2, 3]], centre=2).center == 2
    with pytest.raises(ValueError, match="edges"):
        get_layout({"center": 1})
    with pytest.raises(ValueError, match="unknown layout"):
        get_layout("ntu26")


def test_graph_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import last_lite.models.graph, last_lite.models\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", code], check=True)
