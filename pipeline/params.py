"""Validated clustering parameters, shared by the CLI, the estimator and workflow specs."""

from __future__ import annotations

import math
import textwrap
from typing import Any, Literal, get_args

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
KERNELS: tuple[str, ...] = get_args(KernelName)
DEFAULT_BLOCK_BYTES = 64 * 2**20

BANDWIDTH_ESTIMATES = {"auto": "knn", "knn": "knn", "scott": "scott", "silverman": "silverman"}
"""Names a user may give instead of a bandwidth (CLI, specs), and the rule each stands for."""


class MeanShiftParams(BaseModel):
    """Parameters of one mean shift run.

    The fields below are the one declaration of the run parameters: the command
    line's options, the estimator's parameter docs and the workflow spec's
    ``params`` are built from them (each field's ``description``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bandwidth: float | None = Field(
        default=None,
        description="Kernel bandwidth in data units; None estimates it from a sample "
        "(bandwidth_rule).",
    )
    kernel: KernelName = Field(
        default="flat",
        description="Weight of a point at distance r: gaussian exp(-r^2/2h^2), flat r <= h "
        "(scikit-learn's), or epanechnikov max(0, 1 - r^2/h^2).",
    )
    blurring: bool = Field(
        default=False,
        description="Blurring mean shift (every point moves, the set moves with it) instead "
        "of standard mean shift (seeds move against the fixed point set).",
    )
    bin_seeding: bool = Field(
        default=False,
        description="Seed standard mean shift from grid cells of side bandwidth, as "
        "scikit-learn does.",
    )
    min_bin_freq: int = Field(
        default=1, ge=1, description="Fewest points a grid cell needs to become a seed."
    )
    cluster_all: bool = Field(
        default=True,
        description="Label every point; otherwise points farther than the bandwidth from "
        "their cluster centre get label -1.",
    )
    max_iter: int = Field(
        default=300,
        ge=1,
        description="Most iterations of the shift (per seed for standard mean shift).",
    )
    tol: float = Field(
        default=1e-3,
        ge=0.0,
        lt=1.0,
        description="Convergence threshold as a fraction of the bandwidth: a seed (when "
        "blurring, every point) that moves at most tol x bandwidth has stopped.",
    )
    bandwidth_rule: Literal["knn", "scott", "silverman"] = Field(
        default="knn",
        description="How an omitted bandwidth is estimated: knn (a quantile of "
        "nearest-neighbour distances, scikit-learn's estimate), scott or silverman.",
    )
    bandwidth_quantile: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="Quantile of the nearest-neighbour distances the knn estimate takes.",
    )
    bandwidth_n_samples: int = Field(
        default=5000, ge=2, description="Points sampled for the bandwidth estimate."
    )
    random_state: int = Field(
        default=0, ge=0, description="Seed of the bandwidth estimate's sample."
    )
    block_bytes: int = Field(
        default=DEFAULT_BLOCK_BYTES,
        ge=2**16,
        description="Most bytes of pairwise intermediates one task holds at a time.",
    )
    backend: Literal["auto", "numpy", "cupy"] = Field(
        default="auto",
        description="Array module of the shift kernels: cupy where a GPU is usable (auto), "
        "or numpy.",
    )
    method: Literal["auto", "exact", "grid", "binned"] = Field(
        default="auto",
        description="exact: every point meets every point; grid: only points in "
        "neighbouring cells meet (Gaussian weights beyond 5 bandwidths ignored); binned: "
        "points are first reduced to weighted cells of side bin_fraction x bandwidth; "
        "auto: exact up to 20,000 points or beyond 6 dimensions, grid otherwise (binned "
        "only when asked for: it approximates).",
    )
    bin_fraction: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="Cell side of the binned method, as a fraction of the bandwidth.",
    )
    cluster_order: Literal["density", "size"] | None = Field(
        default=None,
        description="How clusters are numbered: density (scikit-learn's: by the number of "
        "points within the bandwidth of the centre, or the kernel sum there, then by the "
        "centre's coordinates, descending), size (largest cluster first, ties by "
        "coordinates ascending); None: density for the flat kernel, whose densities are "
        "counts, size for the others, whose kernel sums round differently when the points "
        "are summed in another order.",
    )
    label_by: Literal["nearest", "mode"] | None = Field(
        default=None,
        description="nearest: a point joins the centre nearest to it (scikit-learn); mode: "
        "the centre nearest to where it converged (needs the points as seeds); None: mode "
        "when blurring or binned, else nearest.",
    )

    def numbering(self) -> Literal["density", "size"]:
        """``cluster_order``, None resolved for the kernel."""
        if self.cluster_order is not None:
            return self.cluster_order
        return "density" if self.kernel == "flat" else "size"

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


def parameters_doc(names: list[str] | tuple[str, ...] | None = None, indent: str = "    ") -> str:
    """A numpydoc section body documenting run parameters from their field declarations.

    Parameters
    ----------
    names : sequence of str, optional
        Fields to document, in this order (default: all, in declaration order).
    indent : str
        Indentation of the field lines (descriptions get four spaces more).
    """
    lines = []
    for name in names or tuple(MeanShiftParams.model_fields):
        field = MeanShiftParams.model_fields[name]
        default = "64 MiB" if name == "block_bytes" else repr(field.default)
        lines.append(f"{indent}{name} : {_type_text(field.annotation)}, default {default}")
        lines.append(
            textwrap.fill(
                field.description or "",
                88,
                break_on_hyphens=False,
                initial_indent=indent + "    ",
                subsequent_indent=indent + "    ",
            )
        )
    return "\n".join(lines)


def _type_text(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args and all(isinstance(a, str) for a in args):  # a Literal
        return "{" + ", ".join(f'"{a}"' for a in args) + "}"
    if args:  # X | None, Literal[...] | None
        return _type_text(args[0]) + " or None"
    return getattr(annotation, "__name__", str(annotation))


MeanShiftParams.__doc__ = (
    f"{MeanShiftParams.__doc__.rstrip()}\n\n    Attributes\n    ----------\n{parameters_doc()}\n"
)

EXACT_MAX_POINTS = 20_000
"""Up to this many points ``auto`` runs the exact method (above it, the grid)."""
GRID_MAX_DIMS = 6
"""Beyond this many dimensions a grid's 3^d neighbour cells cost more than they save."""


def resolve_method(n_points: int, n_dims: int, params: MeanShiftParams) -> str:
    """The method ``auto`` stands for on data of this size (see ``MeanShiftParams.method``)."""
    if params.method != "auto":
        return params.method
    if n_points <= EXACT_MAX_POINTS or n_dims > GRID_MAX_DIMS:
        return "exact"
    return "grid"  # exact mean shift's answer (binned, an approximation, is asked for only)


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
