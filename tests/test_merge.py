"""Modes to clusters: scikit-learn's suppression, independent of partitioning."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.neighbors import NearestNeighbors

from pipeline.engine.merge import combine_candidates, mode_candidates, size_order, suppress


def sklearn_suppression(centers, intensity, radius):
    """scikit-learn's merge loop (cluster/_mean_shift.py), restated."""
    ranked = sorted(
        zip(map(tuple, centers), intensity, strict=True), key=lambda t: (t[1], t[0]), reverse=True
    )
    sorted_centers = np.array([c for c, _ in ranked])
    unique = np.ones(len(sorted_centers), dtype=bool)
    nbrs = NearestNeighbors(radius=radius).fit(sorted_centers)
    for i, center in enumerate(sorted_centers):
        if unique[i]:
            unique[nbrs.radius_neighbors([center], return_distance=False)[0]] = 0
            unique[i] = 1
    return sorted_centers[unique]


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 40), st.just(2)), elements=st.floats(-5, 5, width=32)
    ),
    st.data(),
)
def test_suppression_equals_sklearn(modes, data):
    intensity = np.array(
        data.draw(st.lists(st.integers(1, 5), min_size=len(modes), max_size=len(modes))),
        dtype=float,
    )
    modes, keep = np.unique(modes, axis=0, return_index=True)
    intensity = intensity[keep]
    positions, density = combine_candidates([mode_candidates(modes, intensity, 1e-9)], 1e-9)
    ours = positions[suppress(positions, 1.0)]
    np.testing.assert_array_equal(ours, sklearn_suppression(modes, intensity, 1.0))


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 80), st.integers(1, 3)),
        elements=st.floats(-3, 3, width=32),
    ),
    st.integers(1, 10),
    st.randoms(use_true_random=False),
)
def test_candidates_do_not_depend_on_chunking_or_order(modes, n_parts, random):
    density = np.round(np.abs(modes).sum(axis=1), 1) + 1.0
    whole = combine_candidates([mode_candidates(modes, density, 0.25)], 0.25)
    order = list(range(len(modes)))
    random.shuffle(order)
    cuts = (
        sorted(random.sample(range(1, len(modes)), min(n_parts, len(modes)) - 1))
        if len(modes) > 1
        else []
    )
    pieces = np.split(np.array(order), cuts)
    parts = [mode_candidates(modes[p], density[p], 0.25) for p in pieces]
    split = combine_candidates(parts, 0.25)
    np.testing.assert_array_equal(whole[0], split[0])
    np.testing.assert_array_equal(whole[1], split[1])


def test_zero_density_modes_are_dropped():
    positions, density = combine_candidates(
        [mode_candidates(np.array([[0.0], [5.0]]), np.array([0.0, 2.0]), 1e-3)], 1e-3
    )
    np.testing.assert_array_equal(positions, [[5.0]])


def test_size_order_ties_by_coordinates():
    renumber = size_order(np.array([5, 9, 5]), np.array([[3.0], [0.0], [1.0]]))
    np.testing.assert_array_equal(renumber, [2, 0, 1])


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 60), st.integers(1, 3)), elements=st.floats(-5, 5)),
    st.integers(-40, 40),
    st.floats(0.1, 2.0),
)
def test_suppression_is_equivariant_to_scaling_positions_and_radius(positions, power, radius):
    """Scaling by a power of two is exact, so the same modes must survive."""
    scale = 2.0**power
    np.testing.assert_array_equal(
        suppress(positions * scale, radius * scale), suppress(positions, radius)
    )


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 60), st.integers(1, 3)), elements=st.floats(-5, 5)),
    st.randoms(use_true_random=False),
)
def test_suppression_keeps_the_same_modes_in_any_order(positions, random):
    density = np.round(np.abs(positions).sum(axis=1), 1) + 1.0
    order = list(range(len(positions)))
    random.shuffle(order)
    a, _ = combine_candidates([mode_candidates(positions, density, 1e-9)], 1e-9)
    b, _ = combine_candidates([mode_candidates(positions[order], density[order], 1e-9)], 1e-9)
    np.testing.assert_array_equal(a[suppress(a, 0.7)], b[suppress(b, 0.7)])


def test_densities_compare_to_30_bits_and_counts_exactly():
    from pipeline.engine.merge import comparable_density

    counts = np.arange(1.0, 100_001.0)
    np.testing.assert_array_equal(comparable_density(counts), counts)  # counts: exact
    near = np.array([40.0, 40.0 * (1 + 2.0**-34), 40.0 * (1 - 2.0**-34)])
    assert len(set(comparable_density(near))) == 1  # rounding noise ties
    assert comparable_density(np.array([40.0 * (1 + 2.0**-25)]))[0] > 40.0  # real gaps do not
    positions = np.array([[0.0, 0.0], [5.0, 5.0]])
    assert canonical_order_of(positions, near[1:]) == [1, 0]  # tie: coordinates descending


def canonical_order_of(positions, density):
    from pipeline.engine.merge import canonical_order

    return canonical_order(positions, density).tolist()
