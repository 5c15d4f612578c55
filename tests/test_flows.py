"""Prefect flows (``pipeline.flows``): the seed spec, failing specs, retries, skipped reruns
and a served deployment, against a real Prefect API (Prefect's test harness: a local server
on a temporary SQLite database)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
import zarr
from sklearn.metrics import adjusted_rand_score

from pipeline.io.datasets import write_blobs

from .support import CLI, free_port, tree_digest

WORKFLOWS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "workflows")
HAVE_PREFECT = importlib.util.find_spec("prefect") is not None
needs_prefect = pytest.mark.skipif(
    not HAVE_PREFECT, reason="the extra 'prefect' is not installed (pip install -e '.[prefect]')"
)

NO_PREFECT = """
import importlib.machinery, sys
class WithoutPrefect(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "prefect":
            return None
        return super().find_spec(name, path, target)
sys.meta_path[:] = [
    WithoutPrefect if finder is importlib.machinery.PathFinder else finder
    for finder in sys.meta_path
]
"""
"""Python run first in a child process so that Prefect cannot be imported there."""


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A Prefect server for this test process (its API URL); Prefect's home is a temporary
    folder and its telemetry is off."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.3",
    )
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def seed_spec(folder, **changes) -> str:
    """The shipped seed spec in ``folder`` with its data, sections updated by ``changes``."""
    with open(os.path.join(WORKFLOWS, "seed-demo.yaml")) as handle:
        spec = yaml.safe_load(handle)
    for section, values in changes.items():
        if isinstance(values, dict):
            spec.setdefault(section, {}).update(values)
        else:
            spec[section] = values
    path = os.path.join(folder, "seed-demo.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(spec, handle)
    data = os.path.join(folder, "data", "seed.zarr")
    if not os.path.exists(data):
        write_blobs(data, 6, 250, 5.0, 2, seed=0)
    return path


def task_runs(flow_state) -> dict[str, object]:
    """The task runs of a flow run by task name (validate, run, report)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run for run in runs}


def run_log(flow_state) -> list[str]:
    """The messages of a flow run's log, as the Prefect API holds them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [entry.message for entry in logs]


@needs_prefect
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.xdist_group("prefect")  # one test server per test process (--dist loadgroup)
class TestFlow:
    def test_seed_spec_runs_reports_and_a_rerun_is_skipped(self, tmp_path, seed_data):
        from pipeline.flows import FlowResult, meanshift_flow

        spec = seed_spec(tmp_path)
        run_id = "20261201T030000Z"
        result = meanshift_flow(spec, run_id=run_id)
        out = str(tmp_path / "out" / f"seed-demo-{run_id}.zarr")
        page = str(tmp_path / "out" / f"seed-demo-{run_id}-report" / "index.html")
        assert result == FlowResult(run_id, out, "complete", 6, page)
        group = zarr.open_group(out, mode="r")
        assert group.attrs["status"] == "complete"
        assert group.attrs["job"] == {"name": "seed_demo", "run_id": run_id}
        assert adjusted_rand_score(seed_data[1], group["labels"][...]) >= 0.99
        assert os.path.getsize(page) > 0
        digest, written = tree_digest(out), os.stat(page).st_mtime_ns

        state = meanshift_flow(spec, run_id=run_id, return_state=True)
        assert state.is_completed()
        assert state.result() == FlowResult(run_id, out, "skipped", 6, page)
        assert tree_digest(out) == digest and os.stat(page).st_mtime_ns == written
        runs = task_runs(state)
        assert set(runs) == {"validate", "run"}  # the report it has is kept
        assert runs["run"].run_count == 1
        assert any(f"already complete: {out}" in line for line in run_log(state))

    def test_without_a_run_id_the_run_is_named_by_its_scheduled_time(self, tmp_path, monkeypatch):
        from prefect.client.orchestration import get_client

        from pipeline import flows
        from pipeline.flows import meanshift_flow
        from pipeline.jobs.spec import make_run_id

        spec = seed_spec(tmp_path, cluster={"kind": "threads"})
        folder = str(tmp_path / "reports" / "seed")
        monkeypatch.setattr(flows, "PROGRESS_EVERY_S", 0.0)  # a line per iteration
        state = meanshift_flow(spec, report_folder=folder, return_state=True)
        log = run_log(state)
        start = "running in this process: Dask's threaded scheduler"
        assert any(line.startswith(start) for line in log)  # the run's start line
        progress = [line for line in log if line.startswith("iteration ")]
        assert progress and progress[-1].startswith("iteration 5: largest shift ")
        assert progress[-1].split(", ")[1].startswith("0 points moving")
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
        result = state.result()
        assert result.run_id == make_run_id(flow_run.expected_start_time)
        assert result.output.endswith(f"seed-demo-{result.run_id}.zarr")
        assert result.report == os.path.join(folder, "index.html")
        assert os.path.isfile(result.report)

    def test_an_invalid_spec_fails_in_validate_with_every_problem_logged(self, tmp_path):
        from pipeline.flows import meanshift_flow

        spec = seed_spec(
            tmp_path,
            params={"kernal": "gaussian"},
            cluster={"n_workers": 0},
            schedule={"cron": "0 3 * * *", "retries": 3, "retry_delay_s": 0},
        )
        state = meanshift_flow(spec, return_state=True)
        assert state.is_failed()
        assert "params.kernal: unknown key (did you mean 'kernel'?)" in state.message
        assert "(and 1 more, in this run's log)" in state.message
        runs = task_runs(state)
        assert set(runs) == {"validate"} and runs["validate"].run_count == 1
        log = "\n".join(run_log(state))
        assert "params.kernal: unknown key" in log and "cluster.n_workers" in log
        assert not (tmp_path / "out").exists()

    def test_an_input_error_is_not_retried(self, tmp_path):
        from pipeline.flows import meanshift_flow

        spec = seed_spec(
            tmp_path,
            input={"url": "data/missing.zarr"},
            schedule={"cron": "0 3 * * *", "retries": 3, "retry_delay_s": 0},
        )
        state = meanshift_flow(spec, run_id="20261201T030000Z", return_state=True)
        assert state.is_failed() and "input not found" in state.message
        runs = task_runs(state)
        assert runs["run"].run_count == 1 and runs["run"].state.is_failed()
        assert "report" not in runs
        assert not (tmp_path / "out").exists()

    def test_a_cluster_failure_is_retried_as_the_spec_says(self, tmp_path):
        from pipeline.flows import meanshift_flow

        address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
        spec = seed_spec(
            tmp_path,
            cluster={"kind": "remote", "scheduler": address, "connect_timeout": 1},
            schedule={"cron": "0 3 * * *", "retries": 2, "retry_delay_s": 0},
        )
        del_n_workers(spec)
        state = meanshift_flow(spec, run_id="20261201T030000Z", return_state=True)
        assert state.is_failed() and address in state.message
        assert task_runs(state)["run"].run_count == 3  # the first try and 2 retries
        # the flow's own parameters override the spec's policy
        state = meanshift_flow(spec, run_id="20261201T030000Z", retries=0, return_state=True)
        assert state.is_failed() and task_runs(state)["run"].run_count == 1

    def test_the_readme_example_runs_as_a_script(self, tmp_path, prefect_api):
        readme = open(os.path.join(os.path.dirname(WORKFLOWS), "README.md")).read()
        blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        (example,) = [block for block in blocks if "from pipeline.flows import" in block]
        spec = seed_spec(tmp_path)  # the shipped seed spec: an embedded 2-process cluster
        script = tmp_path / "example.py"
        script.write_text(example.replace("workflows/seed-demo.yaml", spec))
        env = dict(os.environ, PREFECT_API_URL=prefect_api)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        run_id, output, status = done.stdout.strip().splitlines()[-1].split()
        assert output == str(tmp_path / "out" / f"seed-demo-{run_id}.zarr")
        assert status == "complete"
        assert zarr.open_group(output, mode="r").attrs["status"] == "complete"

    def test_a_served_deployment_runs_on_its_schedule(self, tmp_path, prefect_api):
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        spec = seed_spec(tmp_path, cluster={"kind": "threads"})
        env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1")
        log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [*CLI, "prefect-serve", spec], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deployment = wait_for_deployment("meanshift/seed_demo", server, tmp_path)
            assert deployment.parameters == {"spec_file": os.path.abspath(spec)}
            (schedule,) = deployment.schedules
            assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "UTC")
            when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
            flow_run = run_deployment(
                "meanshift/seed_demo",
                parameters={"report": False},
                scheduled_time=when,
                timeout=240,
            )
            # the run's process exits after reporting its state; a runner stopped before
            # that cancels the runs it still tracks
            wait_for_no_children(server.pid)
        finally:
            server.terminate()
            server.wait(60)
            log.close()
        assert flow_run.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        out = tmp_path / "out" / f"seed-demo-{when.strftime('%Y%m%dT%H%M%SZ')}.zarr"
        assert zarr.open_group(str(out), mode="r").attrs["status"] == "complete"
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(flow_run.id).state.is_completed()


def del_n_workers(spec: str) -> None:
    """Drop ``cluster.n_workers`` from a spec file (a remote cluster has its own)."""
    with open(spec) as handle:
        data = yaml.safe_load(handle)
    data["cluster"].pop("n_workers", None)
    with open(spec, "w") as handle:
        yaml.safe_dump(data, handle)


def wait_for_no_children(pid: int, timeout: float = 60) -> None:
    """Wait until the process ``pid`` has no child process left (Linux: /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == str(pid) and fields[0] != "Z":
                children.append(entry)
        if not children:
            return
        time.sleep(0.2)
    raise AssertionError(f"process {pid} still has child processes after {timeout} s")


def wait_for_deployment(name: str, server: subprocess.Popen, folder) -> object:
    """The deployment ``name`` once the serving process has registered it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert server.poll() is None, (folder / "serve.log").read_text()[-3000:]
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(0.5)
    raise AssertionError(f"{name} was not served within 120 s")


@needs_prefect
def test_deployment_takes_the_specs_cron_and_timezone(tmp_path):
    from pipeline.errors import ParameterError
    from pipeline.flows import spec_deployment

    spec = seed_spec(tmp_path, schedule={"cron": "30 2 * * 1-5", "timezone": "Europe/Paris"})
    deployment = spec_deployment(spec)
    assert deployment.name == "seed_demo" and deployment.entrypoint == (
        "pipeline.flows.meanshift_flow"
    )
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 2 * * 1-5", "Europe/Paris")
    assert spec_deployment(spec, cron="0 * * * *").schedules[0].schedule.cron == "0 * * * *"
    with pytest.raises(ParameterError, match="Prefect schedules take 5 fields"):
        spec_deployment(spec, cron="0 0 3 * * *")
    seed_spec(tmp_path, schedule=None)
    with pytest.raises(ParameterError, match="no schedule.cron"):
        spec_deployment(spec)


@needs_prefect
def test_only_failures_a_retry_can_mend_are_retried():
    from prefect.states import Failed

    from pipeline.errors import ClusterError, InputDataError, OutputError, ParameterError
    from pipeline.flows import run_job_task

    retry = run_job_task.retry_condition_fn
    for error, retried in [
        (ClusterError("scheduler unreachable"), True),
        (RuntimeError("a bug"), True),
        (ParameterError("bad bandwidth"), False),
        (InputDataError("input not found"), False),
        (OutputError("output exists"), False),
    ]:
        assert retry(run_job_task, None, Failed(data=error)) is retried, error


def test_prefect_serve_refuses_a_bad_spec_before_importing_prefect(tmp_path):
    spec = seed_spec(tmp_path, params={"kernal": "gaussian"})
    code = f"""
import sys
from pipeline.cli import main
try:
    main(["prefect-serve", {spec!r}])
finally:
    print("prefect imported" if "prefect" in sys.modules else "prefect not imported")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"meanshift: error: spec {spec}: params.kernal: unknown key (did you mean 'kernel'?)"
    ]
    assert done.stdout.strip() == "prefect not imported"


def test_prefect_serve_takes_folders_of_specs_with_a_schedule_and_distinct_names(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    seed_spec(first, schedule=None)
    alone = subprocess.run([*CLI, "prefect-serve", str(first)], capture_output=True, text=True)
    assert (alone.returncode, alone.stderr) == (
        2,
        "meanshift: error: no spec with a schedule found\n",
    )
    second = tmp_path / "second"
    second.mkdir()
    seed_spec(second)
    seed_spec(first)
    both = subprocess.run(
        [*CLI, "prefect-serve", str(first), str(second)], capture_output=True, text=True
    )
    assert both.returncode == 2
    assert both.stderr.strip().splitlines() == [
        f"meanshift: error: specs {first / 'seed-demo.yaml'} and {second / 'seed-demo.yaml'} "
        "both name the job 'seed_demo'; give each job its own name"
    ]


def test_without_the_extra_flows_say_how_to_install_it_and_their_tests_skip(tmp_path):
    spec = seed_spec(tmp_path)
    serve = NO_PREFECT + f"from pipeline.cli import main\nmain(['prefect-serve', {spec!r}])"
    done = subprocess.run([sys.executable, "-c", serve], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "meanshift: error: prefect-serve needs Prefect 3: pip install 'meanshift-pipeline[prefect]'"
    ]
    validate = NO_PREFECT + f"from pipeline.cli import main\nmain(['validate', {spec!r}])"
    done = subprocess.run([sys.executable, "-c", validate], capture_output=True, text=True)
    assert done.returncode == 0 and ": ok (job seed_demo" in done.stdout, done.stderr
    library = NO_PREFECT + "import pipeline.flows"
    done = subprocess.run([sys.executable, "-c", library], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: pipeline.flows needs Prefect 3: pip install 'meanshift-pipeline[prefect]'"
    )
    tests = NO_PREFECT + (
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-rs',"
        f" {__file__!r}, '-k', 'TestFlow or cron_and_timezone or mend']))"
    )
    root = os.path.dirname(os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", tests], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "9 skipped" in done.stdout
    assert "the extra 'prefect' is not installed (pip install -e '.[prefect]')" in done.stdout
