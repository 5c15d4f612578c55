"""The bad-input matrix: every case through the `meanshift` command, input checksummed.

Each row builds its own input store, runs `meanshift run`, and checks the exit code, the
one line that names the problem (or, for inputs that are odd but valid, the result), and
that the input folder is byte-for-byte unchanged. Jobs run where `auto` puts them (in the
command's process); the invalid-row cases also on a worker process, where the rows are found
and counted in another process than the one that reports them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import zarr

from .support import meanshift, tree_digest

BLOBS = np.concatenate(
    [
        np.random.default_rng(c).normal(centre, 0.5, (100, 2))
        for c, centre in enumerate([(0, 0), (6, 0), (0, 6), (6, 6)])
    ]
)
"""Four well-separated blobs of 100 points (bandwidth 2.5 finds them)."""


def _store(folder: str, values: np.ndarray, name: str = "points", dtype: object = None) -> str:
    path = os.path.join(folder, "in.zarr")
    group = zarr.open_group(path, mode="w")
    chunks = (max(1, min(len(values), 128)), *values.shape[1:])
    group.create_array(name, shape=values.shape, chunks=chunks, dtype=dtype or values.dtype)
    group[name][...] = values
    return path


def _with_bad_rows(value: float) -> np.ndarray:
    values = BLOBS.copy()
    values[[5, 150, 399], 1] = value
    return values


def _plain_folder(folder: str) -> str:
    path = os.path.join(folder, "not-zarr")
    os.makedirs(path)
    with open(os.path.join(path, "notes.txt"), "w") as handle:
        handle.write("not a zarr store")
    return path


def _labels(out: str) -> np.ndarray:
    return zarr.open_group(out, mode="r")["labels"][...]


def _clusters_of(out: str) -> int:
    return len(zarr.open_group(out, mode="r")["sizes"][...])


def _same_clusters_as_float_blobs(out: str, folder: str) -> None:
    reference = os.path.join(folder, "reference.zarr")
    store = _store(os.path.join(folder, "ref"), BLOBS)
    run = meanshift("run", "-i", store, "-o", reference, "-b", "2.5", "--quiet")
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(_labels(out), _labels(reference))


def _scaled(scale: float) -> Callable[[str, str], None]:
    def check(out: str, folder: str) -> None:
        _same_clusters_as_float_blobs(out, folder)
        centres = zarr.open_group(out, mode="r")["centers"][...]
        reference = zarr.open_group(os.path.join(folder, "reference.zarr"), mode="r")
        np.testing.assert_allclose(centres / scale, reference["centers"][...], rtol=1e-9)

    return check


def _dropped_rows_are_unlabelled(out: str, folder: str) -> None:
    labels = _labels(out)
    assert set(labels[[5, 150, 399]]) == {-1}
    assert (np.delete(labels, [5, 150, 399]) >= 0).all() and _clusters_of(out) == 4
    assert zarr.open_group(out, mode="r").attrs["dropped_rows"] == 3


def _one_cluster_at(point: list[float], size: int) -> Callable[[str, str], None]:
    def check(out: str, folder: str) -> None:
        group = zarr.open_group(out, mode="r")
        assert list(group["sizes"][...]) == [size]
        np.testing.assert_allclose(group["centers"][...], [point])
        assert set(group["labels"][...]) == {0}

    return check


def _nested(folder: str) -> str:
    path = os.path.join(folder, "in.zarr")
    zarr.open_group(path, mode="w").create_group("sub").create_array("pts", data=BLOBS)
    return path


FLOAT64_MAX = np.finfo(np.float64).max
EXTREMES = np.array([[FLOAT64_MAX] * 2, [-FLOAT64_MAX] * 2, [FLOAT64_MAX, -FLOAT64_MAX], [0, 0]])
"""Four points at the float64 limits and the origin, each farther than 1e308 from the others."""


@dataclass
class Case:
    """One bad (or odd) input: how to make it, what to pass, what must come out."""

    make: Callable[[str], str]
    options: list[str] = field(default_factory=list)
    code: int = 3
    says: str = ""
    check: Callable[[str, str], None] | None = None
    worker_process: bool = False


CASES = {
    "nan-rows-refused": Case(
        lambda f: _store(f, _with_bad_rows(np.nan)),
        ["-b", "2.5"],
        3,
        "3 of 400 rows hold NaN or Inf values; --drop-invalid-rows leaves them out",
        worker_process=True,
    ),
    "inf-rows-refused-estimating-bandwidth": Case(
        lambda f: _store(f, _with_bad_rows(np.inf)), [], 3, "3 of 400 rows hold NaN or Inf values"
    ),
    "nan-and-inf-rows-dropped-and-counted": Case(
        lambda f: _store(f, np.where(np.arange(400)[:, None] == 5, np.inf, _with_bad_rows(np.nan))),
        ["-b", "2.5", "--drop-invalid-rows"],
        0,
        "left out 3 rows holding NaN or Inf (labelled -1)",
        _dropped_rows_are_unlabelled,
        worker_process=True,
    ),
    "every-row-invalid": Case(
        lambda f: _store(f, np.full((10, 2), np.nan)),
        ["--drop-invalid-rows"],
        3,
        "all 10 rows hold NaN or Inf values",
    ),
    "one-dimensional": Case(lambda f: _store(f, np.arange(10.0)), [], 3, "must be 2-D"),
    "three-dimensional": Case(lambda f: _store(f, np.zeros((4, 2, 2))), [], 3, "must be 2-D"),
    "text": Case(lambda f: _store(f, np.full((4, 2), "a"), dtype=str), [], 3, "real numbers"),
    "boolean": Case(lambda f: _store(f, np.zeros((4, 2), bool)), [], 3, "its dtype is bool"),
    "complex": Case(lambda f: _store(f, np.zeros((4, 2), np.complex64)), [], 3, "complex64"),
    "integers-converted": Case(
        lambda f: _store(f, np.round(BLOBS * 100).astype(np.int32)),
        ["-b", "250"],
        0,
        "400 points x 2 dims -> 4 clusters",
    ),
    "empty": Case(lambda f: _store(f, np.zeros((0, 2))), [], 3, "is empty (shape (0, 2))"),
    "one-point": Case(
        lambda f: _store(f, np.array([[1.0, 2.0]])),
        [],
        0,
        "all points are identical",
        _one_cluster_at([1.0, 2.0], 1),
    ),
    "all-identical": Case(
        lambda f: _store(f, np.full((50, 3), 7.5)),
        [],
        0,
        "using bandwidth 1.0",
        _one_cluster_at([7.5, 7.5, 7.5], 50),
    ),
    "huge-magnitudes-1e30": Case(
        lambda f: _store(f, BLOBS * 1e30), ["-b", "2.5e30"], 0, "-> 4 clusters", _scaled(1e30)
    ),
    "tiny-magnitudes-1e-30": Case(
        lambda f: _store(f, BLOBS * 1e-30), ["-b", "2.5e-30"], 0, "-> 4 clusters", _scaled(1e-30)
    ),
    "zero-bandwidth": Case(lambda f: _store(f, BLOBS), ["-b", "0"], 2, "must be a positive"),
    "negative-bandwidth": Case(lambda f: _store(f, BLOBS), ["-b", "-2"], 2, "must be a positive"),
    "nan-bandwidth": Case(lambda f: _store(f, BLOBS), ["-b", "nan"], 2, "must be a positive"),
    "bandwidth-too-small-warns": Case(
        lambda f: _store(f, BLOBS), ["-b", "1e-3"], 0, "the bandwidth 0.001 is probably too small"
    ),
    "missing-path": Case(lambda f: os.path.join(f, "nowhere.zarr"), [], 3, "input not found"),
    "not-zarr": Case(_plain_folder, [], 3, "not a Zarr store"),
    "three-distinct-points-estimated-bandwidth": Case(
        lambda f: _store(f, np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])),
        [],
        3,
        "30% of 3 sampled points counts no neighbour but each point itself; give a bandwidth "
        "or a larger --bandwidth-quantile",
    ),
    "float64-limits-with-bandwidth-1e308": Case(
        lambda f: _store(f, EXTREMES), ["-b", "1e308"], 0, "4 points x 2 dims -> 4 clusters"
    ),
    "float64-limits-bandwidth-too-small": Case(
        lambda f: _store(f, EXTREMES), ["-b", "1e290"], 2, "data spanning 2 x 1.79769e+308"
    ),
    "nested-array": Case(_nested, ["--array", "sub/pts", "-b", "2.5"], 0, "-> 4 clusters"),
    "nested-array-missing": Case(
        _nested, ["--array", "sub/x", "-b", "2.5"], 3, "no array 'sub/x' (arrays found: sub/pts)"
    ),
    "group-without-the-array": Case(
        lambda f: _store(f, BLOBS, name="coords"), [], 3, "no array 'points'"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_matrix(name, tmp_path):
    case = CASES[name]
    folder = str(tmp_path / "data")
    os.makedirs(folder)
    source = case.make(folder)
    before = tree_digest(folder)
    out = str(tmp_path / "out.zarr")
    where = ["--n-workers", "1"] if case.worker_process else []
    done = meanshift("run", "-i", source, "-o", out, *where, *case.options)
    assert done.returncode == case.code, done.stderr
    assert "Traceback" not in done.stderr
    if case.code:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("meanshift"), done.stderr
        assert case.says in lines[0]
        assert not os.path.exists(out) or zarr.open_group(out).attrs["status"] != "complete"
    else:
        assert case.says in done.stdout + done.stderr
        assert "overflow" not in done.stderr and "RuntimeWarning" not in done.stderr
        assert zarr.open_group(out, mode="r").attrs["status"] == "complete"
        if case.check is not None:
            case.check(out, str(tmp_path))
    assert tree_digest(folder) == before  # the input is never modified


def test_an_existing_output_of_another_job_is_refused(tmp_path):
    source = _store(str(tmp_path), BLOBS)
    out = str(tmp_path / "out.zarr")
    assert meanshift("run", "-i", source, "-o", out, "-b", "2.5", "--quiet").returncode == 0
    before = tree_digest(str(tmp_path))
    other = meanshift("run", "-i", source, "-o", out, "-b", "3", "--quiet")
    assert other.returncode == 4 and "pass --overwrite to replace it" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert tree_digest(str(tmp_path)) == before


def test_an_invalid_spec_file_is_named(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: job\ninput: {url: in.zarr}\noutput: {path: out.zarr}\nparams: {kernel: cosine}\n"
    )
    before = tree_digest(str(tmp_path))
    done = meanshift("run", "--spec", str(spec))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "params.kernel" in lines[0] and str(spec) in lines[0]
    assert tree_digest(str(tmp_path)) == before


def test_a_grid_run_over_a_wide_box_says_nothing_of_overflows(tmp_path):
    """Cell keys of a box too large for one int64 index are refused before they are
    computed: the run falls back quietly (no NumPy overflow warning on a correct result)."""
    values = np.random.default_rng(0).normal(0, 1e9, (300, 6))
    source, out = _store(str(tmp_path), values), str(tmp_path / "out.zarr")
    done = meanshift("run", "-i", source, "-o", out, "-b", "1", "--method", "grid", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        "meanshift: warning: 300 clusters for 300 points: the bandwidth 1 is probably too small"
    ]
