"""Saved state of a running job, kept in its output group so a rerun can continue.

Layout, inside the output group while the job runs::

    checkpoint/            a subgroup, removed before the output is marked complete
        a, b               blurring positions (bandwidth units), two alternating slots
        seeds-<i>          standard mean shift: the converged state of seed chunk i
        cells-<name>       binned method: the cell table after the binning pass
    attrs["checkpoint"]    {"fingerprint", "stage", ...}: what is saved and valid

Every array is written in full before the attribute that points at it, so a crash at
any moment leaves a valid state (or none). ``fingerprint`` ties the state to one input,
parameter set and version: a different job never continues another's state.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..naming import task_name
from .store import output_errors, write_per_point

GROUP = "checkpoint"
"""Name of the subgroup holding the saved arrays."""

CELL_ARRAYS = ("keys", "counts", "centroids", "low", "high")
"""What the binned method keeps from its binning pass."""


class ZarrCheckpoint:
    """The engine's ``Checkpoint`` on a Zarr output group.

    Parameters
    ----------
    group : zarr.Group
        The job's output group, open for writing.
    row_chunk : int
        Rows per Zarr chunk of per-point arrays.
    fingerprint : str
        Identity of the job (see :func:`pipeline.jobs.job.job_fingerprint`).
    every : int
        Save blurring positions after every ``every``-th iteration; 0 saves nothing.
    """

    def __init__(self, group: zarr.Group, row_chunk: int, fingerprint: str, every: int = 1):
        if every < 0:
            raise ValueError(f"checkpoint interval must be >= 0, got {every}")
        self.group, self.row_chunk, self.fingerprint, self.every = (
            group,
            row_chunk,
            fingerprint,
            every,
        )

    # ------------------------------------------------------------------ shared
    def _saved(self, stage: str) -> dict[str, Any] | None:
        saved = self.group.attrs.get("checkpoint")
        if not saved or saved.get("fingerprint") != self.fingerprint:
            return None
        if saved.get("stage") != stage or GROUP not in self.group:
            return None
        return dict(saved)

    def _record(self, stage: str, **state: Any) -> None:
        with output_errors(self.group):
            self.group.update_attributes(
                {"checkpoint": {**state, "stage": stage, "fingerprint": self.fingerprint}}
            )

    def _subgroup(self) -> zarr.Group:
        with output_errors(self.group):
            if GROUP in self.group:
                return self.group[GROUP]
            return self.group.create_group(GROUP)

    def _store_array(self, name: str, values: np.ndarray) -> None:
        sub = self._subgroup()
        with output_errors(self.group):
            if name in sub:
                del sub[name]
            chunks = (max(1, min(len(values), 1 << 20)), *values.shape[1:])
            sub.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype)
            sub[name][...] = values

    # ---------------------------------------------------------------- blurring
    def load(self) -> tuple[int, da.Array, list[float], float | None] | None:
        """Blurring: (iteration, positions, shifts so far, last entropy), or None."""
        saved = self._saved("blurring")
        if saved is None:
            return None
        array = self.group[GROUP][saved["slot"]]
        positions = da.from_array(array, chunks=array.chunks, name=task_name("resume", saved))
        return int(saved["iteration"]), positions, list(saved["shifts"]), saved["entropy"]

    def save(
        self, iteration: int, positions: da.Array, shifts: list[float], entropy: float | None
    ) -> None:
        """Blurring: keep the positions after ``iteration`` (every ``every``-th one)."""
        if self.every == 0 or iteration % self.every:
            return
        saved = self._saved("blurring")
        slot = "b" if saved is not None and saved["slot"] == "a" else "a"
        sub = self._subgroup()
        if slot not in sub:
            with output_errors(self.group):
                sub.create_array(
                    slot,
                    shape=positions.shape,
                    chunks=(self.row_chunk, positions.shape[1]),
                    dtype="float64",
                )
        write_per_point(sub, slot, positions, self.row_chunk)
        self._record("blurring", iteration=iteration, slot=slot, shifts=shifts, entropy=entropy)

    # ---------------------------------------------------------------- standard
    def finished_chunks(self, chunks: tuple[int, ...]) -> dict[int, zarr.Array]:
        """Standard mean shift: the saved state of each finished seed chunk, by index."""
        if self.every == 0:
            return {}
        saved = self._saved("standard")
        if saved is None or tuple(saved["chunks"]) != tuple(chunks):
            return {}
        sub = self.group[GROUP]
        return {int(i): sub[f"seeds-{i}"] for i in saved["done"]}

    def save_chunk(self, index: int, chunks: tuple[int, ...], block: np.ndarray) -> None:
        """Standard mean shift: keep the converged state of seed chunk ``index``."""
        if self.every == 0:
            return
        saved = self._saved("standard")
        done = [] if saved is None or tuple(saved["chunks"]) != tuple(chunks) else saved["done"]
        self._store_array(f"seeds-{index}", np.ascontiguousarray(block))
        self._record("standard", chunks=list(chunks), done=sorted({*done, int(index)}))

    # ------------------------------------------------------------------ binned
    def load_cells(self) -> dict[str, np.ndarray] | None:
        """Binned method: the cell table of a finished binning pass, or None."""
        if self.every == 0 or self._saved("binned") is None:
            return None
        sub = self.group[GROUP]
        return {name: sub[f"cells-{name}"][...] for name in CELL_ARRAYS}

    def save_cells(self, cells: dict[str, np.ndarray]) -> None:
        """Binned method: keep the cell table (``CELL_ARRAYS``) after the binning pass."""
        if self.every == 0:
            return
        for name in CELL_ARRAYS:
            self._store_array(f"cells-{name}", np.asarray(cells[name]))
        self._record("binned", n_cells=int(len(cells["counts"])))

    # -------------------------------------------------------------------- end
    def clear(self) -> None:
        """Drop the saved state (the job is about to be marked complete)."""
        with output_errors(self.group):
            if GROUP in self.group:
                del self.group[GROUP]
            if "checkpoint" in self.group.attrs:
                del self.group.attrs["checkpoint"]
