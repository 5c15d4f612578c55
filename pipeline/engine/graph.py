"""Dask plumbing: shared graph nodes, tree reductions, results as they finish.

Every worker needs the whole point set, which reaches the workers as one graph node
per computation (a task that concatenates the chunks, fetched once by each worker),
never as a broadcast scatter.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..naming import task_name
from ..params import MeanShiftParams
from . import tasks
from .records import Checkpoint


def _stack(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate row chunks (one task per computation)."""
    return np.concatenate(blocks, axis=0)


def share(array: da.Array) -> Any:
    """One graph node holding the whole array, fetched once by each worker that needs it."""
    return dask.delayed(_stack, pure=True)(
        *array.to_delayed().ravel(), dask_key_name=task_name("shared", array)
    )


def share_point_set(array: da.Array, weights: Any, method: str, params: MeanShiftParams) -> Any:
    """The shared point set as one graph node: built once per computation, fetched by workers."""
    name = task_name("pointset", array, weights, method, params)
    return dask.delayed(tasks.build_point_set, pure=True)(
        method,
        params.kernel,
        params.block_bytes,
        weights,
        *array.to_delayed().ravel(),
        dask_key_name=name,
    )


def shared_value(value: Any, stage: str) -> Any:
    """``value`` as one named graph key (sent once to each worker that needs it)."""
    return dask.delayed(value, pure=True, traverse=False, name=task_name(stage, value))


def tree_reduce(parts: list[Any], combine: Callable[..., Any], split_every: int = 8) -> Any:
    """Combine delayed values in a tree of at most ``split_every`` inputs per task."""
    level = 0
    while len(parts) > 1:
        level += 1
        parts = [
            dask.delayed(combine)(
                *parts[i : i + split_every],
                dask_key_name=task_name("combine", level, i, *parts[i : i + split_every]),
            )
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


def as_finished(blocks: list[Any], indices: list[int]) -> Iterator[tuple[int, Any, Any]]:
    """Yield (index, NumPy block, handle for reuse) for each delayed block as it finishes.

    On a ``distributed`` client the blocks run at once and arrive in the order they
    finish (the handle is the future, so the data stays on its worker); on other
    schedulers they are computed together.
    """
    try:
        if "distributed" not in sys.modules:  # never imported: no client can exist
            raise ImportError
        from distributed import as_completed, get_client

        client = get_client()
    except (ImportError, ValueError):
        for index, block in zip(indices, dask.compute(*blocks), strict=True):
            yield index, block, dask.delayed(block)
        return
    futures = client.compute(blocks)
    index_of = {future.key: index for future, index in zip(futures, indices, strict=True)}
    for future, block in as_completed(futures, with_results=True):
        if future.status != "finished":  # cancelled (a lost scheduler): its error, not data
            future.result()
        yield index_of[future.key], block, future


def saving_chunks(state: da.Array, checkpoint: Checkpoint) -> tuple[da.Array, int]:
    """Compute ``state``'s row chunks, saving each as it finishes; reuse saved ones.

    Returns the state (finished chunks stay on the workers) and how many chunks were
    taken from the checkpoint.
    """
    chunks = state.chunks[0]
    saved = checkpoint.finished_chunks(chunks)
    blocks = state.to_delayed().ravel()
    parts: list[Any] = [None] * len(blocks)
    for index, array in saved.items():
        parts[index] = da.from_array(
            array, chunks=array.shape, name=task_name("resume", str(array.store_path), index)
        )
    todo = [i for i in range(len(blocks)) if i not in saved]
    for index, block, handle in as_finished([blocks[i] for i in todo], todo):
        checkpoint.save_chunk(index, chunks, block)
        parts[index] = da.from_delayed(handle, shape=block.shape, dtype=block.dtype)
    return da.concatenate(parts), len(saved)
