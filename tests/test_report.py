"""`meanshift report`: PNGs and an HTML page from a finished output."""

from __future__ import annotations

import matplotlib.image
import pytest

from pipeline.jobs.job import run_job
from pipeline.jobs.spec import ClusterSpec
from pipeline.params import make_params
from pipeline.report import write_report

from .support import meanshift


@pytest.fixture(scope="module")
def finished(tmp_path_factory, seed_store):
    out = str(tmp_path_factory.mktemp("report") / "seed-clusters.zarr")
    params = make_params(bandwidth=2.5, kernel="gaussian", blurring=True)
    run_job(seed_store, out, params, cluster=ClusterSpec(n_workers=1), name="report_test")
    return out


def test_report_pages_and_pictures(finished, tmp_path):
    done = meanshift("report", finished)
    assert done.returncode == 0, done.stderr
    folder = finished[: -len(".zarr")] + "-report"
    assert done.stdout.strip() == f"report: {folder}/index.html"
    for name in ("clusters.png", "convergence.png", "sizes.png"):
        picture = matplotlib.image.imread(f"{folder}/{name}")
        assert picture.shape[0] > 300 and picture.std() > 0.01  # drawn, not blank
    page = open(f"{folder}/index.html").read()
    for text in ("6</td>", "gaussian", "blurring", "iterate_s", "report_test", "1,500 of 1,500"):
        assert text in page
    sampled = write_report(finished, str(tmp_path / "small"), max_points=300)
    assert "300 of 1,500 points (random sample)" in open(sampled).read()


def test_report_projects_higher_dimensions_on_principal_components(tmp_path):
    data, out = str(tmp_path / "d5.zarr"), str(tmp_path / "d5-out.zarr")
    assert meanshift("generate", "-o", data, "--dims", "5", "--per-cluster", "200").returncode == 0
    options = ["-b", "6", "--kernel", "gaussian", "--quiet", "--n-workers", "1"]
    assert meanshift("run", "-i", data, "-o", out, *options).returncode == 0
    page = open(write_report(out)).read()
    assert "first two principal components" in page and "5 dims" in page


def test_report_refuses_an_incomplete_output(tmp_path, seed_store):
    import zarr

    out = tmp_path / "partial.zarr"
    zarr.open_group(str(out), mode="w").update_attributes({"status": "running"})
    done = meanshift("report", str(out))
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"meanshift: error: output {out} is not complete (status: running)"
    ]
