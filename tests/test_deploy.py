"""Deployment files that cannot run here (no Docker engine, no Kubernetes): they parse, every
command they run exists with the options they pass, and they install the project as the
README does."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
import yaml

from pipeline.cli import cli
from pipeline.jobs.spec import cron_trigger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


def check_meanshift_command(words: list[str]) -> None:
    """``meanshift <command> [options]``: the command exists and takes every option given."""
    assert words[0] == "meanshift", words
    command = cli.commands[words[1]]
    known = {name for param in command.params for name in getattr(param, "opts", [])}
    given = [w.split("=")[0] for w in words[2:] if w.startswith("-")]
    assert set(given) <= known, (words, set(given) - known)
    ctx = command.make_context("meanshift", list(words[2:]), resilient_parsing=True)
    assert ctx is not None


def check_dask_command(words: list[str]) -> None:
    """``dask scheduler|worker [options]``: every option is in that command's --help."""
    assert words[0] == "dask" and words[1] in ("scheduler", "worker"), words
    help_text = subprocess.run([DASK, words[1], "--help"], capture_output=True, text=True).stdout
    for option in (w for w in words[2:] if w.startswith("--")):
        assert option in help_text, (words[1], option)


def shell_commands(text: str) -> list[list[str]]:
    """The meanshift/dask commands of a shell line (split at && || ; and parentheses)."""
    found = []
    for part in re.split(r"&&|\|\||;|\(|\)", text):
        words = shlex.split(part.split(">>")[0])
        if words and os.path.basename(words[0]) in ("meanshift", "dask"):
            found.append([os.path.basename(words[0]), *words[1:]])
    return found


def command_words(command: list[str]) -> list[list[str]]:
    if command[:2] == ["sh", "-c"]:
        return shell_commands(command[2])
    return [command]


def test_compose_file_services_commands_and_exposure():
    compose = yaml.safe_load(read("docker", "compose.yaml"))
    services = compose["services"]
    assert {"scheduler", "worker-1", "worker-2", "runner"} <= set(services)
    assert services["scheduler"]["ports"] == ["127.0.0.1:8787:8787"]  # dashboard: localhost
    for name in ("worker-1", "worker-2", "runner", "schedule"):
        assert "data:/data" in services[name]["volumes"]  # one shared volume for Zarr data
        assert services[name]["image"] == services["scheduler"]["image"]  # same versions
    checked = 0
    for service in services.values():
        for words in command_words(service["command"]):
            (check_meanshift_command if words[0] == "meanshift" else check_dask_command)(words)
            checked += 1
    assert checked >= 6
    # the runner's spec ships in the image and points at the compose scheduler
    spec = yaml.safe_load(read("workflows", "cluster-job.yaml"))
    assert spec["cluster"]["scheduler"] == "tcp://scheduler:8786"
    assert spec["input"]["url"].startswith("/data/")


@pytest.mark.parametrize(
    "dockerfile, extras", [("Dockerfile", {"plot"}), ("Dockerfile.gpu", {"gpu", "plot"})]
)
def test_images_install_the_project_like_the_readme(dockerfile, extras):
    text = read("docker", dockerfile)
    installs = re.findall(r"pip install '\.\[([a-z,]+)\]'", text)
    assert installs and set(installs[0].split(",")) == extras
    declared = tomllib.loads(read("pyproject.toml"))["project"]["optional-dependencies"]
    assert extras <= set(declared)
    assert "pip install" in read("README.md")
    for copied in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert os.path.exists(os.path.join(ROOT, copied)), copied
    if "gpu" in extras:
        assert any("dask-cuda" in d for d in declared["gpu"])
        assert any(d.startswith("cupy") for d in declared["gpu"])
        assert text.startswith("#") and "FROM nvidia/cuda:" in text


def test_crontab_and_kubernetes_cronjob_run_existing_commands():
    lines = [
        ln for ln in read("workflows", "deploy", "crontab").splitlines() if ln and ln[0] != "#"
    ]
    assert lines
    for line in lines:
        fields = line.split(None, 5)
        cron_trigger(" ".join(fields[:5]), "UTC")
        for words in shell_commands(fields[5]):
            check_meanshift_command(words)
    job = yaml.safe_load(read("workflows", "deploy", "k8s-cronjob.yaml"))
    assert job["kind"] == "CronJob" and job["apiVersion"] == "batch/v1"
    cron_trigger(job["spec"]["schedule"], "UTC")
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    check_meanshift_command(container["command"])
    assert "--skip-complete" in container["command"]


def test_conda_environments_match_the_package_dependencies():
    project = tomllib.loads(read("pyproject.toml"))["project"]

    def names(requirements):
        return {re.split(r"[\[<>=!~ ]", r)[0].lower() for r in requirements}

    core = names(project["dependencies"])
    test = names(project["optional-dependencies"]["test"])
    variants = [("environment.yml", set()), ("environment-gpu.yml", {"cupy", "dask-cuda"})]
    for env_file, extra in variants:
        env = yaml.safe_load(read(env_file))
        listed = names(d for d in env["dependencies"] if isinstance(d, str))
        listed |= {"matplotlib"} if "matplotlib-base" in listed else set()
        assert core <= listed, (env_file, core - listed)
        assert test <= listed, (env_file, test - listed)
        assert extra <= listed, (env_file, extra - listed)


def test_ci_runs_a_test_command_the_readme_gives_and_the_makefile_defines():
    ci = [line.strip() for line in read(".ci/run").splitlines()]
    command = ci[-1]  # the last line runs the tests
    assert command.startswith("make ")
    readme = read("README.md")
    assert f"{command} " in readme  # given in the README's test section
    target = command.split()[1]
    makefile = read("Makefile")
    recipe = makefile.split(f"\n{target}: ", 1)[1].split("\n\n", 1)[0]
    assert "pytest" in recipe and '-m "not gpu"' in recipe  # everything a CPU can run
    fast = makefile.split("\ntest: ", 1)[1].split("\n\n", 1)[0]
    assert '-m "not slow and not gpu"' in fast
    assert "-n auto" in fast and "-n auto" in recipe  # one test process per core
    assert readme.splitlines()[:12].count("make test    # the test suite") == 1
    markers = tomllib.loads(read("pyproject.toml"))["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":")[0] for m in markers} == {"slow", "gpu"}


def test_every_slow_test_names_the_faster_test_of_its_property():
    """A ``slow`` mark sits next to a comment naming the fast test that checks the same."""
    tests = os.path.dirname(__file__)
    found = 0
    for name in sorted(os.listdir(tests)):
        if not name.startswith("test_") or not name.endswith(".py"):
            continue
        lines = read(os.path.join("tests", name)).splitlines()
        for i, line in enumerate(lines):
            if "mark.slow" in line and "markers" not in line:
                found += 1
                comments = [x.split("#", 1)[1] for x in lines[max(0, i - 3) : i + 1] if "#" in x]
                assert re.search(r"\btest_\w+", " ".join(comments)), (name, i + 1)
    assert found >= 1
