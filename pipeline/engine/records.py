"""The named values that travel between the engine's stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import dask.array as da
import numpy as np

ProgressCallback = Callable[[int, float, int], None]
"""Called after each iteration with (iteration, largest shift in data units, points or seeds
still moving): every blurring iteration, and every step of standard mean shift run in
process (the binned method's cells, NumPy input)."""


@dataclass
class MeanShiftResult:
    """What a mean shift run produces.

    Attributes
    ----------
    labels : dask.array.Array of int32, shape (n,)
        Cluster of each point (numbered as ``cluster_order`` says); -1 for outliers.
    centers : numpy.ndarray, shape (k, d)
    sizes : numpy.ndarray of int64, shape (k,)
    modes : dask.array.Array or None, shape (n, d)
        Where each point converged (when the points themselves were the seeds).
    bandwidth : float
    bandwidth_estimated : bool
    n_iter : int
        Iterations of the blurring loop, or the most steps any seed took.
    max_shift : list of float
        Largest shift of each blurring iteration (data units); empty otherwise.
    n_seeds : int
    converged : bool
        Whether the stopping rule was met before ``max_iter``.
    stop_reason : str
    timings : dict of str to float
        Seconds spent per stage.
    method : str
        The method used (``auto`` resolved).
    n_cells : int or None
        Weighted cells the binned method reduced the points to.
    resumed_from_iteration : int
        The saved iteration a blurring run continued from (0: it started afresh).
    resumed : str or None
        What a resumed run took from its checkpoint (None: it started afresh).
    backend : {"numpy", "cupy"}
        The array module the run used.
    """

    labels: da.Array
    centers: np.ndarray
    sizes: np.ndarray
    modes: da.Array | None
    bandwidth: float
    bandwidth_estimated: bool
    n_iter: int
    max_shift: list[float] = field(default_factory=list)
    n_seeds: int = 0
    converged: bool = True
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    method: str = "exact"
    n_cells: int | None = None
    resumed_from_iteration: int = 0
    resumed: str | None = None
    backend: str = "numpy"


@dataclass(frozen=True)
class SeedColumns:
    """Where each value of a seed's state lies in the state array's columns.

    A chunk of seeds travels between tasks as one 2-D block (one array per task result);
    its columns are the seed's position (``d`` of them), its density, then
    ``STANDARD_EXTRA`` (steps taken, converged) or ``BLURRING_EXTRA`` (last shift length).
    """

    d: int

    STANDARD_EXTRA = ("n_iter", "converged")
    BLURRING_EXTRA = ("moved",)

    @property
    def position(self) -> slice:
        return slice(0, self.d)

    @property
    def density(self) -> int:
        return self.d

    @property
    def n_iter(self) -> int:
        return self.d + 1

    @property
    def moved(self) -> int:
        return self.d + 1

    @property
    def converged(self) -> int:
        return self.d + 2

    def width(self, blurring: bool) -> int:
        """Number of columns of a blurring or a standard state."""
        extra = self.BLURRING_EXTRA if blurring else self.STANDARD_EXTRA
        return self.d + 1 + len(extra)


@dataclass
class Prepared:
    """Validated points (float64, data units) and what later stages need to know about them."""

    points: Any  # dask or NumPy array
    weights: Any  # dask or NumPy array, or None
    origin: np.ndarray  # midpoint of the bounding box
    half_span: float  # half the largest extent of the bounding box


@dataclass
class Iterated:
    """Per-seed state after the shift loop (columns: :class:`SeedColumns`) and how it ended."""

    state: Any  # dask or NumPy array
    n_iter: int
    shifts: list[float]
    converged: bool
    reason: str
    resumed_from: int = 0
    resumed: str | None = None

    def modes(self, d: int) -> Any:
        """Where each seed ended (bandwidth units)."""
        return self.state[:, SeedColumns(d).position]


@dataclass
class Shifted:
    """The shift loop's outcome, with what the merge and labelling stages take from it."""

    z: Any  # the points in bandwidth units
    point_set: Any  # the fixed set standard mean shift climbed (None: blurring)
    iterated: Iterated
    modes: Any  # where each point ended (None: the seeds were not the points)
    n_seeds: int


class Checkpoint(Protocol):
    """Where a run saves its state as it goes, and finds it again after a crash.

    Blurring saves positions between iterations, standard mean shift each finished
    chunk of seeds, the binned method its cell table after the binning pass.
    """

    def load(self) -> tuple[int, da.Array, list[float], float | None] | None:
        """(iteration, positions in bandwidth units, shifts so far, last entropy), or None."""

    def save(
        self, iteration: int, positions: da.Array, shifts: list[float], entropy: float | None
    ) -> None:
        """Keep the state after ``iteration`` (the previous one stays valid until this ends)."""

    def finished_chunks(self, chunks: tuple[int, ...]) -> dict[int, Any]:
        """Saved states of finished seed chunks (array-likes) by chunk index."""

    def save_chunk(self, index: int, chunks: tuple[int, ...], block: np.ndarray) -> None:
        """Keep the converged state of seed chunk ``index``."""

    def load_cells(self) -> dict[str, np.ndarray] | None:
        """The binned method's cell table (keys, counts, centroids, low, high), or None."""

    def save_cells(self, cells: dict[str, np.ndarray]) -> None:
        """Keep the binned method's cell table."""
