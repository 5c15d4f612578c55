"""Zarr in and out: open the input read-only, create aligned outputs, mark them complete last.

Output layout (a Zarr v3 group)::

    labels   (n,)   int32    chunked like the input rows
    centers  (k, d) float64
    sizes    (k,)   int64
    modes    (n, d) float64  optional, chunked like the input rows
    attrs: status ("running" → "complete" or "failed"), parameters, bandwidth,
           iterations, per-iteration max shift, timings, versions

Every array is written with dask chunks equal to its Zarr chunks, so no two
tasks ever write the same chunk, and ``status: "complete"`` is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import zarr
import zarr.errors

from ..errors import InputDataError, OutputError, ParameterError, first_line, literal
from ..naming import task_name
from .locations import (  # noqa: F401  (part of this module's interface too)
    PROCESS_LOCAL_PROTOCOLS,
    StorageOptions,
    absolute,
    access_denied,
    check_location,
    is_local,
    local_path,
    protocol,
    zarr_options,
)

STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class InputInfo:
    """What was opened: the array, where it came from, and its row chunking."""

    array: zarr.Array
    url: str
    name: str
    row_chunk: int
    storage_options: dict[str, Any] | None = None


DEFAULT_ARRAY = "points"
"""The array of an input group that holds the points, unless another is named."""


def open_points(
    url: str, array: str = DEFAULT_ARRAY, storage_options: dict[str, Any] | None = None
) -> InputInfo:
    """Open an ``(n, d)`` numeric Zarr array read-only.

    Parameters
    ----------
    url : str
        Path or fsspec URL of a Zarr group (or of an array).
    array : str
        Name of the array inside the group.
    storage_options : dict, optional
        Passed to fsspec for remote URLs.

    Raises
    ------
    InputDataError
        The store is missing, not Zarr, lacks the array, or the array is not 2-D numeric.
    """
    if is_local(url) and not os.path.exists(local_path(url)):
        raise InputDataError(f"input not found: {url}")
    if not is_local(url):
        _probe_remote_input(url, storage_options)
    try:
        node = zarr.open(url, mode="r", storage_options=zarr_options(url, storage_options))
    except (zarr.errors.NodeNotFoundError, FileNotFoundError):
        raise InputDataError(f"not a Zarr store (no zarr.json or .zarray/.zgroup): {url}") from None
    except Exception as exc:  # fsspec and codec errors come in many types
        raise InputDataError(f"cannot open input {url}: {exc}") from None
    arr = _points_array(node, url, array)
    if arr.ndim != 2:
        raise InputDataError(
            f"'{array}' must be 2-D (n points x d dimensions); it has shape {arr.shape}"
        )
    kind = np.dtype(arr.dtype).kind if isinstance(arr.dtype, np.dtype) else "O"
    if kind not in "fiu":
        raise InputDataError(f"'{array}' must hold real numbers; its dtype is {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputDataError(f"'{array}' is empty (shape {arr.shape})")
    row_chunk = (arr.shards or arr.chunks)[0]
    return InputInfo(arr, url, array, int(row_chunk), storage_options)


def _probe_remote_input(url: str, storage_options: StorageOptions | None) -> None:
    """Reach a remote input once, alone, and say in one line why it cannot be read: no such
    object or bucket, refused credentials, an unreachable server.

    Raises
    ------
    InputDataError
    """
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as exc:  # unknown protocols, missing filesystem packages
        raise InputDataError(f"cannot open input {url}: {first_line(exc)}") from None
    path = path.rstrip("/")
    try:
        fs.info(path)
        return
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        raise InputDataError(access_denied("input", url, exc)) from None
    except Exception as exc:
        raise InputDataError(f"cannot open input {url}: {first_line(exc)}") from None
    bucket, missing_bucket = path.split("/", 1)[0], False
    with contextlib.suppress(Exception):  # a store without buckets, or no right to list them
        missing_bucket = bucket != path and not fs.exists(bucket)
    where = f" (no bucket '{bucket}')" if missing_bucket else ""
    raise InputDataError(f"input not found: {url}{where}")


def _points_array(node: zarr.Array | zarr.Group, url: str, array: str) -> zarr.Array:
    """The array named ``array`` in the group ``node`` (or ``node``, an array itself).

    Raises
    ------
    ParameterError
        ``array`` leaves the group, or is named although ``url`` is an array.
    InputDataError
        The group has no such array.
    """
    if ".." in array.split("/"):
        raise ParameterError(f"{{array}} '{literal(array)}' leaves the input group", array=None)
    if isinstance(node, zarr.Array):
        if array != DEFAULT_ARRAY:
            raise ParameterError(
                f"{literal(url)} is an array itself; {{array}} '{literal(array)}' names an "
                "array inside a group (give one or the other)",
                array=None,
            )
        return node
    try:
        found_node = node[array.strip("/")]  # a path: "points", or "sub/points"
    except KeyError:
        names = sorted(name for name, member in node.members(max_depth=None)
                       if isinstance(member, zarr.Array))  # fmt: skip
        found = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "none"
        raise InputDataError(f"{url} has no array '{array}' (arrays found: {found})") from None
    if not isinstance(found_node, zarr.Array):
        raise InputDataError(f"'{array}' in {url} is not an array")
    return found_node


STAMP_FIELDS = (
    "ETag",
    "etag",
    "md5Hash",
    "generation",
    "LastModified",
    "last_modified",
    "updated",
    "mtime",
)
"""Per-file metadata, where a store gives it, that changes when an object is rewritten."""


def array_location(info: InputInfo) -> str:
    """The URL of the input array itself (its folder or prefix in the store)."""
    path = info.array.path
    return info.url.rstrip("/") + ("/" + path if path else "")


def content_stamp(info: InputInfo) -> str | None:
    """An identity of the input array's content taken from its store's listing, without
    reading the data: every file or object under the array with its size and the
    metadata that changes when it is rewritten (local files: modification time in ns and
    inode; object stores: ETag, generation or modification time). None where the store
    lists no files (a store in memory).
    """
    location = array_location(info)
    try:
        if is_local(location):
            files = _local_listing(local_path(location))
        else:
            fs, root = fsspec.core.url_to_fs(location, **(info.storage_options or {}))
            found = fs.find(root, detail=True)
            files = [
                [name[len(root) :], entry.get("size")]
                + [str(entry[key]) for key in STAMP_FIELDS if key in entry]
                for name, entry in sorted(found.items())
            ]
    except Exception as exc:
        raise InputDataError(f"cannot list input {location}: {first_line(exc)}") from None
    if not files:
        return None
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def _local_listing(root: str) -> list[list[Any]]:
    """Every file under ``root`` (or ``root`` itself, a zip file): path, size, mtime, inode."""
    if os.path.isfile(root):
        status = os.stat(root)
        return [["", status.st_size, status.st_mtime_ns, status.st_ino]]
    files = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            status = os.stat(path)
            files.append(
                [os.path.relpath(path, root), status.st_size, status.st_mtime_ns, status.st_ino]
            )
    return sorted(files)


class CheckedReader:
    """An input array whose read errors (a corrupt chunk, a vanished file) name the rows and
    chunk, as an :class:`InputDataError`; what dask reads blocks from."""

    def __init__(self, info: InputInfo) -> None:
        self.info = info
        self.shape, self.dtype, self.ndim = info.array.shape, info.array.dtype, info.array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.info.array[key])
        except Exception as exc:
            rows = key[0] if isinstance(key, tuple) else key
            start = rows.start or 0 if isinstance(rows, slice) else 0
            stop = rows.stop if isinstance(rows, slice) and rows.stop else self.shape[0]
            chunks = f"{start // self.info.row_chunk}-{(stop - 1) // self.info.row_chunk}"
            raise InputDataError(
                f"cannot read rows {start}-{stop - 1} of input {self.info.url} "
                f"(row chunks {chunks}): {first_line(exc)}"
            ) from None


TARGET_TASK_BYTES = 8 * 2**20
"""Rows of float64 data one task reads at most (rounded to whole Zarr chunks)."""


def rows_per_task(n_rows: int, n_dims: int, row_chunk: int) -> int:
    """Rows per dask chunk: a whole number of Zarr chunks (or shards), near 1/8 of the rows.

    Aim for at least 8 tasks (parallelism) and at most ``TARGET_TASK_BYTES`` of
    float64 per task, but never split a Zarr chunk, so every task reads and
    writes whole chunks.
    """
    target = min(max(1, TARGET_TASK_BYTES // (8 * n_dims)), -(-n_rows // 8))
    return row_chunk * max(1, target // row_chunk)


def points_as_dask(info: InputInfo) -> da.Array:
    """The input as a dask array: whole Zarr chunks (or shards) of rows per block, all columns."""
    n, d = info.array.shape
    rows = rows_per_task(n, d, info.row_chunk)
    name = task_name("read", info.url, info.name, info.array.shape, info.array.dtype.str, rows)
    reader = CheckedReader(info)
    return da.from_array(
        reader,
        chunks=(rows, d),
        lock=False,
        asarray=True,
        name=name,
        meta=np.empty((0, 0), dtype=info.array.dtype),
    )


def existing_attributes(
    url: str, storage_options: StorageOptions | None = None
) -> dict[str, Any] | None:
    """Attributes of an existing Zarr group at ``url``, or None if there is none."""
    try:
        group = zarr.open_group(url, mode="r", storage_options=zarr_options(url, storage_options))
        return group.attrs.asdict()
    except Exception:
        return None


def _normalized(url: str, storage_options: StorageOptions | None) -> tuple[str, str, Any]:
    """A location as (protocol, path, filesystem): local paths absolute with symlinks
    resolved (their filesystem None), URLs as their filesystem names them."""
    if is_local(url):
        return "file", os.path.realpath(local_path(url)), None
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    kind = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return kind, path.rstrip("/"), fs


GROUP_FILES = ("zarr.json", ".zgroup")
"""Files that make a folder a Zarr group (v3, v2)."""


def store_root(url: str, storage_options: StorageOptions | None = None) -> tuple[str, str]:
    """Where the Zarr hierarchy holding ``url`` starts, as (protocol, path): ``url`` or its
    highest ancestor reached through parents that are Zarr groups (``base.zarr/points``
    -> ``base.zarr``), local symlinks resolved."""
    kind, path, fs = _normalized(url, storage_options)
    if fs is None:
        exists, parent_of = os.path.exists, os.path.dirname
    else:
        exists, parent_of = fs.exists, fs._parent
    try:
        while (parent := parent_of(path).rstrip("/")) and parent != path:
            if not any(exists(f"{parent}/{name}") for name in GROUP_FILES):
                break
            path = parent
    except Exception:  # an unreachable store: the next read or write says so
        pass
    return kind, path


def overlaps_input(
    output_url: str,
    input_url: str,
    output_options: StorageOptions | None = None,
    input_options: StorageOptions | None = None,
) -> bool:
    """Whether an output at ``output_url`` would write into the input's Zarr store (its
    :func:`store_root`), or contain it.

    Raises
    ------
    OutputError
        ``output_url`` names no filesystem fsspec knows.
    """
    try:
        out_kind, out_path, _ = _normalized(output_url, output_options)
    except Exception as exc:  # unknown protocols, missing filesystem packages
        raise OutputError(f"cannot write output {output_url}: {first_line(exc)}") from None
    in_kind, in_path = store_root(input_url, input_options)
    if out_kind != in_kind:
        return False
    a, b = out_path, in_path
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def location_exists(url: str, storage_options: StorageOptions | None = None) -> bool:
    """Whether anything is at ``url``: a local file, folder or link; a remote object or
    prefix holding objects.

    Raises
    ------
    OutputError
        The store cannot be reached (a missing bucket, refused credentials).
    """
    if is_local(url):
        return os.path.lexists(local_path(url))
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return bool(fs.exists(path.rstrip("/")))
    except PermissionError as exc:
        raise OutputError(access_denied("output", url, exc)) from None
    except Exception as exc:
        raise OutputError(f"cannot write output {url}: {first_line(exc)}") from None


OUR_ARRAYS = {"write_empty_chunks": True}
"""Every chunk of an array this package writes is stored, even one equal to the fill value
(Zarr 3 leaves those out by default), so a chunk missing from an output is damage."""


def create_output(
    url: str,
    n_points: int,
    row_chunk: int,
    replace: bool = False,
    attributes: dict[str, Any] | None = None,
    storage_options: StorageOptions | None = None,
) -> zarr.Group:
    """Create the output group with ``status: "running"`` (and ``attributes``) and its
    ``labels`` array; ``replace`` removes what is there first (:mod:`.output` decides).

    Raises
    ------
    OutputError
        It cannot be written, or something is there and ``replace`` is not set.
    """
    try:
        group = zarr.open_group(
            url, mode="w" if replace else "w-", storage_options=zarr_options(url, storage_options)
        )
        group.update_attributes({**(attributes or {}), "status": STATUS_RUNNING})
        group.create_array(
            "labels",
            shape=(n_points,),
            chunks=(row_chunk,),
            dtype="int32",
            fill_value=-1,
            config=OUR_ARRAYS,
        )
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        raise OutputError(
            f"output {literal(url)} already exists; pass {{overwrite}} to replace it",
            overwrite=True,
        ) from None
    except OSError as exc:
        raise OutputError(f"cannot write output {url}: {exc.strerror or exc}") from None
    except Exception as exc:  # fsspec protocol errors, missing filesystem packages
        raise OutputError(f"cannot write output {url}: {exc}") from None
    return group


def write_per_point(group: zarr.Group, name: str, values: da.Array, row_chunk: int) -> None:
    """Write a per-point dask array into the group (created if absent), one task per block.

    Dask chunks must cover whole Zarr chunks, so no two tasks write the same chunk;
    values whose chunks do not are rechunked to the Zarr chunks first.
    """
    if name in group:
        target = group[name].with_config(OUR_ARRAYS)
    else:
        target = group.create_array(
            name,
            shape=values.shape,
            chunks=(row_chunk, *values.shape[1:]),
            dtype=values.dtype,
            config=OUR_ARRAYS,
        )
    size = target.chunks[0]
    if any(rows % size for rows in values.chunks[0][:-1]):
        values = values.rechunk({0: size})
    written = values.map_blocks(
        _write_block,
        target,
        chunks=((1,) * values.numblocks[0],),
        drop_axis=list(range(1, values.ndim)),
        dtype=np.int64,
        name=task_name(f"write{name}", values, str(target.store_path)),
    )
    written.compute()


def _write_block(block: np.ndarray, target: zarr.Array, block_info: Any = None) -> np.ndarray:
    """Store one block at its rows of ``target``; returns the number of rows written."""
    start, stop = block_info[0]["array-location"][0]
    with output_errors(target):
        target[start:stop] = block
    return np.array([stop - start])


def write_summary(
    group: zarr.Group,
    centers: np.ndarray,
    sizes: np.ndarray,
    attributes: dict[str, Any],
    url: str | None = None,
) -> None:
    """Write centres, sizes and the run's attributes, verify every array (:func:`damage`),
    then mark the output complete.

    Raises
    ------
    OutputError
        A write failed (disk full, file too large, permissions), or what was written does
        not read back whole (workers that wrote somewhere this process cannot see).
    """
    k, d = centers.shape
    with output_errors(group):  # overwrite: a resumed run may find a stopped run's arrays
        for name, values, chunks in (
            ("centers", centers, (max(k, 1), d)),
            ("sizes", sizes, (max(k, 1),)),
        ):
            group.create_array(
                name,
                shape=values.shape,
                chunks=chunks,
                dtype="float64" if name == "centers" else "int64",
                config=OUR_ARRAYS,
                overwrite=True,
            )[...] = values
        group.update_attributes({**attributes, "status": STATUS_RUNNING})
    problem = damage(group)  # what the workers wrote, read back here
    if problem is not None:
        raise OutputError(
            f"output {literal(url or str(group.store_path))} was not written whole ({problem}); "
            "it is not marked complete"
        )
    with output_errors(group):
        group.update_attributes({"status": STATUS_COMPLETE})


@contextlib.contextmanager
def output_errors(target: Any) -> Iterator[None]:
    """Turn OS write failures into one-line :class:`OutputError` naming the output."""
    try:
        yield
    except OSError as exc:
        where = getattr(target, "store_path", target)
        raise OutputError(f"cannot write output {where}: {exc.strerror or exc}") from None


def mark_failed(group: zarr.Group, message: str) -> None:
    """Record a failure on the output (best effort)."""
    try:
        group.update_attributes({"status": STATUS_FAILED, "error": message})
    except Exception:
        pass


def remove_output(group: zarr.Group) -> None:
    """Delete an output group and everything in it (best effort): one this run created."""
    from zarr.core.sync import sync

    with contextlib.suppress(Exception):
        sync(group.store_path.delete_dir())


def open_result(
    url: str, storage_options: StorageOptions | None = None, verified: bool = False
) -> zarr.Group:
    """Open a complete output group read-only, its arrays read back first (:func:`damage`)
    unless they were ``verified`` already.

    Raises
    ------
    InputDataError
        The output is missing or not marked complete.
    OutputError
        It is marked complete but damaged.
    """
    try:
        group = zarr.open_group(url, mode="r", storage_options=zarr_options(url, storage_options))
        status = group.attrs.get("status")
    except Exception:
        raise InputDataError(f"no meanshift output at {url}") from None
    if status != STATUS_COMPLETE:
        raise InputDataError(f"output {url} is not complete (status: {status})")
    problem = None if verified else damage(group)
    if problem is not None:
        raise OutputError(
            f"output {literal(url)} is marked complete but damaged ({problem}); "
            "run its job again with {overwrite}",
            overwrite=True,
        )
    return group


def damage(group: zarr.Group) -> str | None:
    """What is wrong with a complete output's arrays, or None if nothing is.

    Every array the attributes promise must be there with its shape, with every chunk
    present (this package stores every chunk it writes, :data:`OUR_ARRAYS`); the labels are
    read whole (chunk by chunk): each in ``[-1, k)``, and the counts per cluster equal to
    ``sizes``. Metadata or chunks that do not read are damage too.
    """
    try:
        return _damage(group)
    except Exception as exc:  # unparseable metadata, undecodable chunks: many types
        return f"unreadable: {first_line(exc)}"


def _damage(group: zarr.Group) -> str | None:
    n, k = int(group.attrs.get("n_points", -1)), int(group.attrs.get("n_clusters", -1))
    d = int(((group.attrs.get("input") or {}).get("shape") or [0, -1])[1])
    expected = {"labels": (n,), "centers": (k, d), "sizes": (k,)}
    names = set(group.array_keys())
    if "modes" in names:
        expected["modes"] = (n, d)
    for name, shape in expected.items():
        if name not in names:
            return f"no array '{name}'"
        array = group[name]
        if tuple(array.shape) != shape:
            return f"'{name}' has shape {tuple(array.shape)}, not {shape}"
        if array.nchunks_initialized < array.nchunks and array.size:
            return f"'{name}' misses {array.nchunks - array.nchunks_initialized} chunk(s)"
    sizes = np.asarray(group["sizes"][...])
    counts = np.zeros(k, dtype=np.int64)
    labels = group["labels"]
    step = labels.chunks[0]  # one chunk a read: a bad one leaves no sibling reads pending
    for start in range(0, n, step):
        block = np.asarray(labels[start : start + step])
        if block.size and (block.min() < -1 or block.max() >= k):
            return f"labels outside -1..{k - 1} in rows {start}-{start + len(block) - 1}"
        counts += np.bincount(block[block >= 0], minlength=k)
    if not np.array_equal(counts, sizes):
        return "the labels do not add up to the cluster sizes"
    return None


def reopen_output(url: str, storage_options: StorageOptions | None = None) -> zarr.Group:
    """An unfinished output, open for writing again (``status: running``), its state kept."""
    group = zarr.open_group(url, mode="r+", storage_options=zarr_options(url, storage_options))
    with output_errors(group):
        group.update_attributes({"status": STATUS_RUNNING, "error": None})
    return group
