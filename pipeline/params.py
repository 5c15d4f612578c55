"""Validated clustering parameters, shared by the CLI, the estimator and workflow specs."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ParameterError

KernelName = Literal["gaussian", "flat", "epanechnikov"]
KERNELS: tuple[str, ...] = ("gaussian", "flat", "epanechnikov")
DEFAULT_BLOCK_BYTES = 64 * 2**20


class MeanShiftParams(BaseModel):
    """Parameters of one mean shift run.

    Attributes
    ----------
    bandwidth : float or None
        Kernel bandwidth in data units; ``None`` estimates it (see
        :func:`pipeline.bandwidth.estimate_bandwidth`).
    kernel : {"gaussian", "flat", "epanechnikov"}
        Weight given to a point at distance ``r``: ``exp(-r²/2h²)``, ``r <= h``
        (scikit-learn's kernel), or ``max(0, 1 - r²/h²)``.
    blurring : bool
        Blurring mean shift (every point moves, the set moves with it) instead of
        standard mean shift (seeds move against the fixed point set).
    bin_seeding, min_bin_freq :
        Seed standard mean shift from grid cells of side ``bandwidth`` holding at
        least ``min_bin_freq`` points, as scikit-learn does.
    cluster_all : bool
        Label every point; when False, points farther than ``bandwidth`` from
        their cluster centre get label -1.
    max_iter : int
        Most iterations of the shift (per seed for standard mean shift).
    tol : float
        Convergence threshold as a fraction of the bandwidth: a seed (or, when
        blurring, every point) that moves at most ``tol * bandwidth`` has stopped.
    bandwidth_rule, bandwidth_quantile, bandwidth_n_samples, random_state :
        Controls of the bandwidth estimate (see :func:`pipeline.bandwidth.estimate_bandwidth`).
    block_bytes : int
        Most bytes of pairwise intermediates one task holds at a time.
    backend : {"auto", "numpy", "cupy"}
        Array module for the shift kernels.
    method : {"auto", "exact", "grid", "binned"}
        ``exact``: every point meets every point. ``grid``: only points in
        neighbouring grid cells meet (exact for flat/Epanechnikov, Gaussian weights
        beyond 5 bandwidths ignored). ``binned``: points are first reduced to weighted
        cells of side ``bin_fraction * bandwidth`` and mean shift runs on the cells.
        ``auto``: exact up to 20,000 points or beyond 6 dimensions, binned up to 4
        dimensions, grid otherwise.
    bin_fraction : float
        Cell side of the binned method, as a fraction of the bandwidth.
    label_by : {"nearest", "mode"} or None
        ``nearest``: a point joins the centre nearest to it (scikit-learn).
        ``mode``: a point joins the centre nearest to where it converged (its basin
        of attraction; needs the points as seeds; with the binned method, where its
        cell converged). None: ``mode`` for blurring mean shift and the binned
        method, ``nearest`` otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bandwidth: float | None = None
    kernel: KernelName = "flat"
    blurring: bool = False
    bin_seeding: bool = False
    min_bin_freq: int = Field(default=1, ge=1)
    cluster_all: bool = True
    max_iter: int = Field(default=300, ge=1)
    tol: float = Field(default=1e-3, ge=0.0, lt=1.0)
    bandwidth_rule: Literal["knn", "scott", "silverman"] = "knn"
    bandwidth_quantile: float = Field(default=0.3, gt=0.0, le=1.0)
    bandwidth_n_samples: int = Field(default=5000, ge=2)
    random_state: int = Field(default=0, ge=0)
    block_bytes: int = Field(default=DEFAULT_BLOCK_BYTES, ge=2**16)
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    method: Literal["auto", "exact", "grid", "binned"] = "auto"
    bin_fraction: float = Field(default=0.25, gt=0.0, le=1.0)
    label_by: Literal["nearest", "mode"] | None = None

    @field_validator("bandwidth")
    @classmethod
    def _positive_finite(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError("must be a positive finite number (or omitted to estimate it)")
        return value

    @model_validator(mode="after")
    def _seeding_needs_standard(self) -> MeanShiftParams:
        if self.bin_seeding and self.blurring:
            raise ValueError("bin_seeding applies to standard mean shift only (not blurring)")
        if self.bin_seeding and self.label_by == "mode":
            raise ValueError("label_by='mode' needs the points as seeds (not bin_seeding)")
        return self

    def labels_from_modes(self, method: str) -> bool:
        """Whether points are labelled by their modes (see ``label_by``)."""
        if self.label_by is None:
            return self.blurring or method == "binned"
        return self.label_by == "mode"


EXACT_MAX_POINTS = 20_000
GRID_MAX_DIMS = 6
BINNED_MAX_DIMS = 4


def resolve_method(n_points: int, n_dims: int, params: MeanShiftParams) -> str:
    """The method ``auto`` stands for on data of this size (see ``MeanShiftParams.method``)."""
    if params.method != "auto":
        return params.method
    if n_points <= EXACT_MAX_POINTS or n_dims > GRID_MAX_DIMS:
        return "exact"
    if n_dims <= BINNED_MAX_DIMS:
        return "binned"
    return "grid"


def make_params(**values: Any) -> MeanShiftParams:
    """Build :class:`MeanShiftParams`, turning validation failures into one-line errors.

    Raises
    ------
    ParameterError
        Naming the first invalid parameter and why.
    """
    try:
        return MeanShiftParams(**values)
    except ValidationError as exc:
        raise ParameterError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Render the first error of a pydantic ValidationError as one line naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown parameter"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not field:
        return f"invalid parameters: {message}{extra}"
    return f"invalid parameter '{field}': {message}{extra}"
