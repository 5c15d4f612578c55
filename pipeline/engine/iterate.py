"""The shift loop: blurring (all points move together) or standard (seeds climb the
fixed point set), with their stop rules and checkpoints; written once for both executors."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..params import MeanShiftParams
from .executors import Executor
from .records import Checkpoint, Iterated, ProgressCallback, SeedColumns

ENTROPY_TOL = 1e-8
"""The blurring loop stops when the entropy of the shift lengths changes less than this."""


def histogram_entropy(counts: np.ndarray) -> float:
    """Entropy of a histogram given by its counts."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class BlurringStop:
    """The blurring stop rule, fed one iteration's ``tasks.iteration_stats`` rows at a time.

    Stops when every point moved at most ``tol`` (bandwidths) or when the entropy of
    the histogram of shift lengths stops changing; the rows' split does not matter.
    """

    def __init__(
        self, params: MeanShiftParams, bandwidth: float, progress: ProgressCallback | None
    ):
        self.tol = params.tol
        self.bandwidth = bandwidth
        self.progress = progress
        self.shifts: list[float] = []
        self.previous_entropy: float | None = None
        self.converged = False
        self.reason = f"reached max_iter={params.max_iter}"

    def done(self, stats: np.ndarray) -> bool:
        """Record one iteration; whether the loop should stop."""
        max_moved, n_moving = stats[:, 0].max(), int(stats[:, 1].sum())
        entropy = histogram_entropy(stats[:, 2:].sum(axis=0))
        self.shifts.append(float(max_moved) * self.bandwidth)
        if self.progress is not None:
            self.progress(len(self.shifts), self.shifts[-1], n_moving)
        if max_moved <= self.tol:
            self.converged = True
            self.reason = f"every point moved at most tol={self.tol} bandwidths"
        elif (
            self.previous_entropy is not None and abs(entropy - self.previous_entropy) < ENTROPY_TOL
        ):
            self.converged = True
            self.reason = "the distribution of shift lengths stopped changing"
        self.previous_entropy = entropy
        return self.converged

    def result(self, state: Any, resumed_from: int = 0) -> Iterated:
        resumed = f"iteration {resumed_from}" if resumed_from else None
        return Iterated(
            state,
            len(self.shifts),
            self.shifts,
            self.converged,
            self.reason,
            resumed_from,
            resumed,
        )


def blurring(
    executor: Executor,
    z: Any,
    weights: Any,
    params: MeanShiftParams,
    method: str,
    bandwidth: float,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> Iterated:
    """Iterate blurring mean shift: every point moves, against the positions of the
    previous iteration (one round trip to the executor per iteration).

    With a ``checkpoint``, the positions are saved after every iteration that does not
    end the loop, and a saved state is continued from (the result is the same).
    """
    d = z.shape[1]
    positions, state = z, z
    stop = BlurringStop(params, bandwidth, progress)
    resumed_from = 0
    saved = None if checkpoint is None else checkpoint.load()
    if saved is not None:
        resumed_from, loaded, stop.shifts, stop.previous_entropy = saved
        positions = executor.resume_positions(loaded, z)
    for iteration in range(resumed_from + 1, params.max_iter + 1):
        point_set = executor.point_set(positions, weights, method, params)
        state, stats = executor.blur_step(positions, point_set, iteration, params)
        positions = state[:, SeedColumns(d).position]
        if stop.done(stats):
            break
        if checkpoint is not None and iteration < params.max_iter:
            checkpoint.save(iteration, positions, list(stop.shifts), stop.previous_entropy)
    return stop.result(state, resumed_from)


def standard(
    executor: Executor,
    seeds: Any,
    point_set: Any,
    params: MeanShiftParams,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> Iterated:
    """Standard mean shift: every seed climbs to its mode on the fixed point set."""
    state, resumed = executor.converge(seeds, point_set, params, progress, checkpoint)
    columns = SeedColumns(seeds.shape[1])
    n_iter, all_converged = executor.compute(
        state[:, columns.n_iter].max(), state[:, columns.converged].min()
    )
    converged = bool(all_converged)
    reason = (
        f"every seed moved at most tol={params.tol} bandwidths"
        if converged
        else f"some seeds completed max_iter={params.max_iter} iterations"
    )
    return Iterated(state, int(n_iter), [], converged, reason, resumed=resumed)
