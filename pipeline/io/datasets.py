"""The seed's synthetic data: isotropic Gaussian blobs around uniform random centroids."""

from __future__ import annotations

import numpy as np
import zarr

from ..errors import OutputError, ParameterError, literal
from .store import (
    StorageOptions,
    check_location,
    existing_attributes,
    location_exists,
    zarr_options,
)

GENERATOR = "meanshift generate"
GENERATION_BLOCK = 2**20
"""Rows drawn at a time (memory bound of ``write_blobs``)."""


def blob_centroids(n_clusters: int, n_dims: int, seed: int) -> np.ndarray:
    """Centroids uniform in ``[-35, 35]^d`` (the seed notebook's range)."""
    return np.random.default_rng(seed).uniform(-35.0, 35.0, (n_clusters, n_dims))


def _cluster_rows(centroid: np.ndarray, per_cluster: int, spread: float, seed: int, cluster: int):
    """Yield a cluster's points in blocks; the values do not depend on the block size."""
    rng = np.random.default_rng([seed, cluster + 1])
    scale = float(np.sqrt(spread))
    for start in range(0, per_cluster, GENERATION_BLOCK):
        rows = min(GENERATION_BLOCK, per_cluster - start)
        block = rng.standard_normal((rows, len(centroid))) * scale + centroid
        yield start, block.astype(np.float32)


def make_blobs(
    n_clusters: int = 6, per_cluster: int = 250, spread: float = 5.0, n_dims: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-memory version of :func:`write_blobs`: ``(points, truth, centroids)``."""
    centroids = blob_centroids(n_clusters, n_dims, seed)
    points = np.empty((n_clusters * per_cluster, n_dims), dtype=np.float32)
    for c in range(n_clusters):
        for start, block in _cluster_rows(centroids[c], per_cluster, spread, seed, c):
            offset = c * per_cluster + start
            points[offset : offset + len(block)] = block
    truth = np.repeat(np.arange(n_clusters, dtype=np.int32), per_cluster)
    return points, truth, centroids


def _check_blob_shape(n_clusters: int, per_cluster: int, spread: float, n_dims: int) -> None:
    """Refuse counts below 1 and a spread that is not a positive finite number."""
    if n_clusters < 1 or per_cluster < 1 or n_dims < 1:
        raise ParameterError(
            "{n_clusters}, {per_cluster} and {n_dims} must be at least 1",
            n_clusters=None,
            per_cluster=None,
            n_dims=None,
        )
    if not (spread > 0 and np.isfinite(spread)):
        raise ParameterError("{spread} must be a positive number", spread=None)


def _chunk_rows(n: int, chunk: int | None) -> int:
    """Rows per Zarr chunk: as asked (default 2^18), at most ``n``."""
    chunk = min(n, chunk or min(n, 2**18))
    if chunk < 1:
        raise ParameterError("{chunk} must be at least 1", chunk=None)
    return chunk


def _open_blob_group(
    url: str, overwrite: bool, storage_options: StorageOptions | None = None
) -> zarr.Group:
    """Create the output group, replacing only earlier generated data and only if asked."""
    check_location(url, storage_options, "output")
    if location_exists(url, storage_options):
        if (existing_attributes(url, storage_options) or {}).get("generator") != GENERATOR:
            raise OutputError(f"output {url} exists and is not generated data; not replacing it")
        if not overwrite:
            raise OutputError(
                f"output {literal(url)} already exists; pass {{overwrite}} to replace it",
                overwrite=True,
            )
    try:
        return zarr.open_group(url, mode="w", storage_options=zarr_options(url, storage_options))
    except OSError as exc:
        raise OutputError(f"cannot write {url}: {exc.strerror or exc}") from None
    except Exception as exc:  # fsspec protocol errors, missing filesystem packages
        raise OutputError(f"cannot write {url}: {exc}") from None


def write_blobs(
    url: str,
    n_clusters: int = 6,
    per_cluster: int = 250,
    spread: float = 5.0,
    n_dims: int = 2,
    seed: int = 0,
    chunk: int | None = None,
    overwrite: bool = False,
    storage_options: StorageOptions | None = None,
) -> zarr.Group:
    """Write the seed's data set to a Zarr group: ``points`` (n, d) float32, ``truth`` (n,) int32.

    Cluster ``c`` occupies rows ``c*per_cluster`` to ``(c+1)*per_cluster``, drawn
    from N(centroid_c, spread·I). Memory use is bounded by ``GENERATION_BLOCK`` rows.
    """
    _check_blob_shape(n_clusters, per_cluster, spread, n_dims)
    n = n_clusters * per_cluster
    chunk = _chunk_rows(n, chunk)
    group = _open_blob_group(url, overwrite, storage_options)
    group.update_attributes({"generator": GENERATOR})
    centroids = blob_centroids(n_clusters, n_dims, seed)
    points = group.create_array(
        "points", shape=(n, n_dims), chunks=(chunk, n_dims), dtype="float32"
    )
    truth = group.create_array("truth", shape=(n,), chunks=(chunk,), dtype="int32")
    for c in range(n_clusters):
        for start, block in _cluster_rows(centroids[c], per_cluster, spread, seed, c):
            offset = c * per_cluster + start
            points[offset : offset + len(block)] = block
        truth[c * per_cluster : (c + 1) * per_cluster] = c
    group.update_attributes(
        {
            "generator": GENERATOR,
            "clusters": n_clusters,
            "per_cluster": per_cluster,
            "spread": spread,
            "dims": n_dims,
            "seed": seed,
            "centroids": centroids.tolist(),
        }
    )
    return group
