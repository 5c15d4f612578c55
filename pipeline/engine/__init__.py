"""The engine: mean shift of a point set as a sequence of stages, on Dask or on threads.

Data flow (one module per stage)::

    api        choose the executor (Dask graph or threads here) and the method
    prepare    check the input, bounds, bandwidth, seeds
    run        the stage sequence: normalise → iterate → finish
    iterate    the shift loop (blurring or standard) and its stop rules
    finish     merge modes into centres, label, number the clusters
    binned     the binned method: points → weighted cells → the stages on the cells

``tasks`` holds what one task does to one chunk (both executors call it),
``executors`` the two ways of running the stages, ``graph`` the Dask plumbing,
``records`` the named values passed between stages; ``bandwidth``, ``seeding``
and ``merge`` the algorithms of those steps.
"""

from .api import mean_shift, shift_to_modes
from .prepare import rows_per_chunk
from .records import Checkpoint, MeanShiftResult, ProgressCallback

__all__ = [
    "Checkpoint",
    "MeanShiftResult",
    "ProgressCallback",
    "mean_shift",
    "rows_per_chunk",
    "shift_to_modes",
]
