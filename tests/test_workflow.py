"""Workflow specs: the shipped examples run, flags override spec values, bad specs are refused."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import yaml
import zarr
from sklearn.metrics import adjusted_rand_score

from pipeline.engine import mean_shift
from pipeline.jobs.spec import load_spec
from pipeline.params import make_params

from .support import meanshift, tree_digest

WORKFLOWS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "workflows")


def copy_example(name: str, folder) -> str:
    target = os.path.join(folder, name)
    shutil.copy(os.path.join(WORKFLOWS, name), target)
    return target


def test_every_shipped_spec_is_valid():
    specs = sorted(f for f in os.listdir(WORKFLOWS) if f.endswith(".yaml"))
    assert {"seed-demo.yaml", "large-binned.yaml", "cluster-job.yaml"} <= set(specs)
    done = meanshift("validate", *[os.path.join(WORKFLOWS, s) for s in specs])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ok") == len(specs)


def test_seed_demo_spec_runs_with_paths_relative_to_the_spec(tmp_path, seed_data):
    spec = copy_example("seed-demo.yaml", tmp_path)
    data = tmp_path / "data" / "seed.zarr"
    assert meanshift("generate", "-o", str(data)).returncode == 0
    digest = tree_digest(str(data))
    done = meanshift("run", "--spec", spec, "--run-id", "20261128T030000Z", "--quiet", cwd="/")
    assert done.returncode == 0, done.stderr
    out = zarr.open_group(str(tmp_path / "out" / "seed-demo-20261128T030000Z.zarr"), mode="r")
    assert out.attrs["status"] == "complete"
    assert out.attrs["job"] == {"name": "seed_demo", "run_id": "20261128T030000Z"}
    assert adjusted_rand_score(seed_data[1], out["labels"][...]) >= 0.99
    assert "modes" in out  # output.modes: true
    assert tree_digest(str(data)) == digest
    # the same run again: a no-op; with other parameters: refused without --overwrite
    again = meanshift("run", "--spec", spec, "--run-id", "20261128T030000Z")
    assert again.returncode == 0 and again.stdout.startswith("already complete"), again.stderr
    other = meanshift("run", "--spec", spec, "--run-id", "20261128T030000Z", "-b", "3", "-q")
    assert other.returncode == 4 and "already exists" in other.stderr
    skipped = meanshift("run", "--spec", spec, "--run-id", "20261128T030000Z", "--skip-complete")
    assert skipped.returncode == 0 and "already complete" in skipped.stdout


def test_large_binned_spec_runs(tmp_path):
    spec = copy_example("large-binned.yaml", tmp_path)
    data = tmp_path / "data" / "large.zarr"
    done = meanshift("generate", "-o", str(data), "--per-cluster", "20000", "--chunk", "16384")
    assert done.returncode == 0
    done = meanshift("run", "--spec", spec, "--run-id", "20261128T023000Z", "--n-workers", "2")
    assert done.returncode == 0, done.stderr
    assert "method: binned" in done.stdout
    out = zarr.open_group(str(tmp_path / "out" / "large-2026-11-28.zarr"), mode="r")
    truth = zarr.open_group(str(data), mode="r")["truth"][...]
    assert adjusted_rand_score(truth, out["labels"][...]) >= 0.999


def test_cluster_spec_runs_with_flags_overriding_the_spec(
    tmp_path, seed_store, seed_data, plain_cluster
):
    spec = copy_example("cluster-job.yaml", tmp_path)
    out = str(tmp_path / "cluster-out.zarr")
    flags = ["--scheduler", plain_cluster.address, "--kernel", "gaussian", "--bandwidth", "2.5"]
    done = meanshift("run", "--spec", spec, "-i", seed_store, "-o", out, *flags, "--quiet")
    assert done.returncode == 0, done.stderr
    result = zarr.open_group(out, mode="r")
    assert result.attrs["parameters"]["kernel"] == "gaussian"  # the flag, not the spec's flat
    assert result.attrs["parameters"]["bandwidth"] == 2.5  # not the spec's auto
    assert result.attrs["parameters"]["bin_seeding"] is True  # from the spec
    assert result.attrs["job"]["name"] == "cluster_job"
    assert adjusted_rand_score(seed_data[1], np.asarray(result["labels"][...])) >= 0.99


BAD_SPECS = [
    ({"colour": "blue"}, "colour: unknown key"),
    ({"params": {"kernel": "cubic"}}, "params.kernel"),
    ({"params": {"bandwidht": 2}}, "params.bandwidht: unknown key"),
    ({"params": {"bandwidth": -1}}, "params.bandwidth"),
    ({"output": {"path": "out/{when}.zarr"}}, "unknown placeholder {when}"),
    ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
    ({"schedule": {"cron": "* * *"}}, "needs 5 fields"),
    ({"cluster": {"kind": "remote"}}, "scheduler is required"),
    ({"cluster": {"kind": "local", "scheduler": "tcp://h:8786"}}, "applies to kind 'remote' only"),
    ({"cluster": {"n_workers": "two"}}, "cluster.n_workers"),
    ({"input": {"url": 3}}, "input.url"),
    ({"name": "9lives"}, "name"),
]


@pytest.mark.parametrize("change, message", BAD_SPECS)
def test_bad_specs_are_refused_in_one_line(tmp_path, change, message):
    spec = {"name": "job", "input": {"url": "in.zarr"}, "output": {"path": "out.zarr"}}
    for key, value in change.items():
        spec[key] = value if not isinstance(value, dict) else {**spec.get(key, {}), **value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    for command in (["validate", str(path)], ["run", "--spec", str(path)]):
        done = meanshift(*command)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], done.stderr


def test_a_scheduler_without_a_kind_means_a_remote_cluster():
    from pipeline.jobs.spec import ClusterSpec

    assert ClusterSpec(scheduler="tcp://h:8786").kind == "remote"
    assert ClusterSpec().kind == "auto" and ClusterSpec(n_workers=2).scheduler is None


def test_unreadable_specs(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("name: [x\n")
    for name, message in [
        ("list.yaml", "expected a mapping"),
        ("broken.yaml", "not readable"),
        ("missing.yaml", "spec file not found"),
    ]:
        done = meanshift("run", "--spec", str(tmp_path / name))
        assert done.returncode == 2 and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_load_spec_fills_output_placeholders(tmp_path):
    path = tmp_path / "s.yaml"
    document = {
        "name": "nightly",
        "input": {"url": "in.zarr"},
        "output": {"path": "out/{name}/{date}/{run_id}.zarr"},
    }
    path.write_text(yaml.safe_dump(document))
    spec = load_spec(str(path))
    expected = os.path.join(str(tmp_path), "out/nightly/2026-11-28/20261128T030000Z.zarr")
    assert spec.output_path("20261128T030000Z") == expected


def test_validate_lists_every_problem_of_every_file_with_suggestions(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: job\ninput: {url: in.zarr}\noutput: {path: out.zarr}\n"
        "params: {bandwidht: 2, kernal: flat}\ncluster: {n_workers: two, kindd: local}\n"
        "colour: blue\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    good = os.path.join(WORKFLOWS, "seed-demo.yaml")
    done = meanshift("validate", str(bad), good, str(broken))
    assert done.returncode == 2
    assert done.stdout == f"{good}: ok (job seed_demo, schedule '0 3 * * *')\n"
    lines = done.stderr.splitlines()
    assert lines[:5] == [
        f"meanshift: error: spec {bad}: params.bandwidht: unknown key (did you mean 'bandwidth'?)",
        f"meanshift: error: spec {bad}: params.kernal: unknown key (did you mean 'kernel'?)",
        f"meanshift: error: spec {bad}: cluster.n_workers: Input should be a valid integer, "
        "unable to parse string as an integer",
        f"meanshift: error: spec {bad}: cluster.kindd: unknown key (did you mean 'kind'?)",
        f"meanshift: error: spec {bad}: colour: unknown key",
    ]
    assert len(lines) == 6 and lines[5].startswith(f"meanshift: error: spec {broken}: not readable")
    run = meanshift("run", "--spec", str(bad))  # one line: the first problem, and how many more
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"meanshift: error: spec {bad}: params.bandwidht: unknown key (did you mean "
        "'bandwidth'?) (and 4 more: meanshift validate lists them)"
    ]


def manager_spec(tmp_path, data: str, cluster: dict) -> str:
    spec = {
        "name": "managed",
        "input": {"url": data},
        "params": {"bandwidth": 2.5, "kernel": "gaussian"},
        "cluster": {"kind": "manager", **cluster},
        "output": {"path": str(tmp_path / "managed.zarr")},
    }
    path = tmp_path / "managed.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_cluster_manager_named_in_a_spec_runs_the_job(seed_store, tmp_path):
    options = {"n_workers": 0, "threads_per_worker": 1, "dashboard_address": ":0"}
    options["silence_logs"] = 50  # CRITICAL: the workers' logs stay off the user's terminal
    cluster = {"class": "distributed:LocalCluster", "options": options, "scale": 2}
    done = meanshift("run", "--spec", manager_spec(tmp_path, seed_store, cluster))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "starting a Dask cluster with distributed:LocalCluster: 2 workers"
    assert lines[1].startswith("dashboard: http://")
    result = zarr.open_group(str(tmp_path / "managed.zarr"), mode="r")
    expected = mean_shift(
        zarr.open_group(seed_store)["points"][...], make_params(bandwidth=2.5, kernel="gaussian")
    )
    np.testing.assert_array_equal(result["labels"][...], expected.labels)
    np.testing.assert_array_equal(result["centers"][...], expected.centers)


@pytest.mark.parametrize(
    ("cluster", "code", "message"),
    [
        (
            {"class": "tests.support:ClusterThatFailsToStart", "options": {"queue": "gpu"}},
            5,
            "the cluster manager tests.support:ClusterThatFailsToStart failed to start: "
            "sbatch: command not found",
        ),
        (
            {"class": "no_such_package.clusters:Cluster"},
            5,
            "cannot import the cluster manager no_such_package.clusters:Cluster: No module named "
            "'no_such_package'",
        ),
        ({"class": "LocalCluster"}, 2, "cluster.class: String should match pattern"),
        ({"scale": 2}, 2, "class is required for kind 'manager'"),
        (
            {"class": "distributed:LocalCluster", "scale": 2, "adapt": {"maximum": 3}},
            2,
            "give either scale or adapt, not both",
        ),
    ],
)
def test_a_cluster_manager_that_cannot_start_is_one_line(
    seed_store, tmp_path, cluster, code, message
):
    done = meanshift("run", "--spec", manager_spec(tmp_path, seed_store, cluster))
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not os.path.exists(tmp_path / "managed.zarr")


def test_manager_fields_apply_to_kind_manager_only():
    from pipeline.jobs.spec import ClusterSpec

    with pytest.raises(ValueError, match="scale applies to kind 'manager' only, not 'local'"):
        ClusterSpec(kind="local", scale=2)
    spec = ClusterSpec(
        kind="manager", **{"class": "dask_jobqueue:SLURMCluster"}, adapt={"maximum": 4}
    )
    assert (spec.manager_class, spec.adapt.minimum, spec.adapt.maximum) == (
        "dask_jobqueue:SLURMCluster",
        0,
        4,
    )
