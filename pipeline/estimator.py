"""scikit-learn compatible ``MeanShift`` over the Dask engine."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .backend import namespace_of, to_host
from .engine import mean_shift, rows_per_chunk, shift_to_modes
from .errors import NoPointNearSeedsError, TooManyClustersWarning
from .jobs.cluster import dask_client
from .kernels import nearest
from .params import DEFAULT_BLOCK_BYTES, MeanShiftParams, make_params, parameters_doc

NO_POINT_NEAR_SEEDS = (
    "No point was within bandwidth=%f of any seed. Try a different seeding"
    " strategy                              or increase the bandwidth."
)
"""scikit-learn's words (spaces included) for a fit in which no seed met a point."""


class MeanShift(ClusterMixin, BaseEstimator):
    """Mean shift clustering with Gaussian, flat or Epanechnikov kernels, on Dask.

    Accepts scikit-learn's parameters (same defaults: flat kernel, standard mean
    shift) plus the kernel, blurring, and where to compute.

    Parameters
    ----------
    seeds : array of shape (m, d), optional
        Starting points of standard mean shift (overrides ``bin_seeding``).
    n_jobs : int, optional
        Threads for in-memory input (default: one per CPU; no effect on a Dask cluster).
    scheduler : str, optional
        Address of a Dask scheduler to run on. Without it, dask input runs on the
        active Dask scheduler and in-memory input in this process, without a task
        graph (methods exact and grid).
    n_workers : int, optional
        Start an embedded local Dask cluster with this many worker processes for the fit.
    {run_parameters}

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (k, d)
        Centres, numbered as ``cluster_order`` says (with the flat kernel as
        scikit-learn numbers them).
    labels_ : ndarray (or dask array for dask input) of shape (n,)
    cluster_sizes_ : ndarray of shape (k,)
    n_iter_ : int
    n_features_in_ : int
    bandwidth_ : float
        The bandwidth used (given or estimated).

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import MeanShift
    >>> X = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]], dtype=float)
    >>> MeanShift(bandwidth=2).fit(X).labels_
    array([1, 1, 1, 0, 0, 0], dtype=int32)
    """

    def __init__(
        self,
        *,
        bandwidth: float | None = None,
        seeds: Any = None,
        bin_seeding: bool = False,
        min_bin_freq: int = 1,
        cluster_all: bool = True,
        n_jobs: int | None = None,
        max_iter: int = 300,
        kernel: str = "flat",
        blurring: bool = False,
        tol: float = 1e-3,
        backend: str = "auto",
        scheduler: str | None = None,
        n_workers: int | None = None,
        bandwidth_rule: str = "knn",
        bandwidth_quantile: float = 0.3,
        bandwidth_n_samples: int = 5000,
        random_state: int = 0,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        label_by: str | None = None,
        cluster_order: str | None = None,
        method: str = "auto",
        bin_fraction: float = 0.25,
    ) -> None:
        self.bandwidth = bandwidth
        self.seeds = seeds
        self.bin_seeding = bin_seeding
        self.min_bin_freq = min_bin_freq
        self.cluster_all = cluster_all
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.kernel = kernel
        self.blurring = blurring
        self.tol = tol
        self.backend = backend
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.bandwidth_rule = bandwidth_rule
        self.bandwidth_quantile = bandwidth_quantile
        self.bandwidth_n_samples = bandwidth_n_samples
        self.random_state = random_state
        self.block_bytes = block_bytes
        self.label_by = label_by
        self.cluster_order = cluster_order
        self.method = method
        self.bin_fraction = bin_fraction

    def mean_shift_params(self) -> MeanShiftParams:
        """The run parameters: this estimator's attributes of the same names."""
        return make_params(**{name: getattr(self, name) for name in MeanShiftParams.model_fields})

    @property
    def _on_cluster(self) -> bool:
        return self.scheduler is not None or self.n_workers is not None

    @property
    def _threads(self) -> int | None:
        return self.n_jobs if self.n_jobs and self.n_jobs > 0 else None

    @contextlib.contextmanager
    def _compute_context(self, in_memory: bool) -> Iterator[None]:
        if self._on_cluster:
            with dask_client(self.scheduler, self.n_workers):
                yield
        elif in_memory:
            with dask.config.set(scheduler="threads", num_workers=self._threads):
                yield
        else:
            yield

    def _validate(
        self, X: Any, reset: bool, storage_options: dict[str, Any] | None = None
    ) -> tuple[Any, str | None, bool]:
        """Validate input; return (dask or NumPy array, array module of the input, in memory?).

        In-memory input stays a NumPy array unless the fit runs on a Dask cluster.
        """
        if isinstance(X, str | os.PathLike):  # a Zarr group (array "points") or array
            from .io import store

            url = os.fspath(X)
            store.check_location(url, storage_options, "input")
            source = store.open_points(store.absolute(url), storage_options=storage_options)
            X = store.points_as_dask(source)
        if isinstance(X, da.Array):
            if X.ndim != 2:
                raise ValueError(f"Expected a 2-D array, got a {X.ndim}-D dask array")
            if reset:
                self.n_features_in_ = X.shape[1]
            elif X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but MeanShift is expecting "
                    f"{self.n_features_in_} features as input"
                )
            return X, None, False
        module = "cupy" if namespace_of(X).__name__ == "cupy" else None
        # 64-bit integers go to the engine as they are: it refuses those that float64 rounds
        kinds = [np.float64, np.float32, np.int64, np.uint64]
        array = validate_data(self, to_host(X) if module else X, dtype=kinds, reset=reset)
        if self._on_cluster:
            array = da.from_array(array, chunks=(rows_per_chunk(len(array)), array.shape[1]))
        return array, module, True

    def fit(
        self, X: Any, y: Any = None, *, storage_options: dict[str, Any] | None = None
    ) -> MeanShift:
        """Cluster ``X`` (NumPy, CuPy or dask array of shape (n, d), or a Zarr store).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or str
            A path or fsspec URL names a Zarr group (its array ``points``) or a Zarr
            array (``path/array``); it is read as a dask array, as the CLI reads it.
        y : ignored
        storage_options : dict, optional
            fsspec options (endpoint, credentials, ...) of ``X`` given as a remote URL.

        Returns
        -------
        self
        """
        params = self.mean_shift_params()
        points, module, in_memory = self._validate(X, reset=True, storage_options=storage_options)
        seeds = None
        if self.seeds is not None:
            seeds = np.asarray(to_host(self.seeds), dtype=np.float64)
        with self._compute_context(in_memory):
            try:
                with warnings.catch_warnings():  # scikit-learn's warnings only
                    warnings.simplefilter("ignore", TooManyClustersWarning)
                    result = mean_shift(points, params, seeds=seeds, n_threads=self._threads)
            except NoPointNearSeedsError as exc:
                raise ValueError(NO_POINT_NEAR_SEEDS % exc.bandwidth) from None
            labels = np.asarray(result.labels) if in_memory else result.labels.persist()
        self._fitted_points = None if isinstance(points, da.Array) else points
        self.bandwidth_ = result.bandwidth
        self.cluster_centers_ = result.centers
        self.cluster_sizes_ = result.sizes
        self.n_iter_ = result.n_iter
        self.labels_ = labels
        if module == "cupy":
            import cupy

            self.labels_ = cupy.asarray(labels)
            self.cluster_centers_ = cupy.asarray(result.centers)
        return self

    def predict(self, X: Any, method: str = "nearest") -> Any:
        """The cluster of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        method : {"nearest", "shift"}
            ``nearest``: the nearest cluster centre (scikit-learn's). ``shift``: each row
            runs mean shift against the fitted points (as standard mean shift, with the
            fitted bandwidth) and takes the centre nearest to the mode it reaches; with
            ``cluster_all=False`` a row whose mode is farther than the bandwidth from
            every centre, or that never had a point within reach, gets -1. Needs a fit
            on in-memory points.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        if method not in ("nearest", "shift"):
            raise ValueError(f"method must be 'nearest' or 'shift', got {method!r}")
        centers = np.asarray(to_host(self.cluster_centers_), dtype=np.float64)
        points, module, in_memory = self._validate(X, reset=False)
        if method == "shift":
            return self._predict_by_shift(points, centers, module)
        if isinstance(points, da.Array):
            labels = points.map_blocks(
                _predict_block, centers, self.block_bytes, drop_axis=1, dtype=np.int32
            )
            if not in_memory:
                return labels
            with dask.config.set(scheduler="sync"):
                return labels.compute()
        out = _predict_block(points, centers, self.block_bytes)
        if module == "cupy":
            import cupy

            return cupy.asarray(out)
        return out

    def _predict_by_shift(self, points: Any, centers: np.ndarray, module: str | None) -> Any:
        """``predict(method="shift")``: labels of the modes the rows reach."""
        if getattr(self, "_fitted_points", None) is None or isinstance(points, da.Array):
            raise ValueError(
                "predict(method='shift') needs in-memory points, fitted and predicted "
                "(not dask arrays or a fit on a Dask cluster)"
            )
        params = self.mean_shift_params().model_copy(update={"blurring": False})
        modes, density = shift_to_modes(
            self._fitted_points,
            np.asarray(points, dtype=np.float64),
            params,
            self.bandwidth_,
            self._threads,
        )
        index, distance2 = nearest(modes, centers, np, self.block_bytes)
        labels = index.astype(np.int32)
        if not self.cluster_all:
            labels[(distance2 > self.bandwidth_**2) | (density <= 0)] = -1
        if module == "cupy":
            import cupy

            return cupy.asarray(labels)
        return labels


def _predict_block(block: np.ndarray, centers: np.ndarray, block_bytes: int) -> np.ndarray:
    index, _ = nearest(np.asarray(block, dtype=np.float64), centers, np, block_bytes)
    return index.astype(np.int32)


assert MeanShift.__doc__ is not None
MeanShift.__doc__ = MeanShift.__doc__.replace("    {run_parameters}", parameters_doc())
