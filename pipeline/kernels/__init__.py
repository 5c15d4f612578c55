"""Mean shift kernels: one step of a block of queries against a weighted point set.

::

    dispatch    which implementation runs (GPU, compiled CPU, array path), and why
    pointsets   the shared point set: dense, or a grid of cells
    array       the float64 array path (NumPy or CuPy): the reference
    compiled    numba CPU kernels (float32 weights, float64 sums)
    gpu         CUDA kernels (CuPy), generated per dimension and kernel

Everything here works in bandwidth units and knows nothing of Dask.
"""

from .array import (
    blocked_shift,
    kernel_radius,
    kernel_weights,
    largest_coordinate,
    nearest,
    row_major_strides,
    squared_distances,
)
from .dispatch import GPU_DENSE_MAX_POINTS, KERNELS, shift_points
from .pointsets import DensePointSet, GridPointSet, PointSet, converge_seeds

__all__ = [
    "GPU_DENSE_MAX_POINTS",
    "KERNELS",
    "DensePointSet",
    "GridPointSet",
    "PointSet",
    "blocked_shift",
    "converge_seeds",
    "kernel_radius",
    "kernel_weights",
    "largest_coordinate",
    "nearest",
    "row_major_strides",
    "shift_points",
    "squared_distances",
]
