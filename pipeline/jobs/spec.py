"""Workflow specs: one YAML file describes one job (input, parameters, cluster, output, schedule).

Example (``workflows/seed-demo.yaml``)::

    name: seed_demo
    input: {url: data/seed.zarr, array: points}
    params: {bandwidth: 2.5, kernel: gaussian, blurring: true}
    cluster: {kind: local, n_workers: 2}
    output: {path: "out/seed-{run_id}.zarr"}
    schedule: {cron: "0 3 * * *", retries: 2}

Relative paths are relative to the spec file. Unknown keys and wrong types are refused
with one line naming the field. The output path may use ``{name}``, ``{date}`` (UTC,
YYYY-MM-DD) and ``{run_id}`` (UTC, YYYYMMDDTHHMMSSZ of the run, or of the scheduled
time for scheduled runs).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
import string
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ParameterError
from ..params import BANDWIDTH_ESTIMATES, MeanShiftParams, describe_validation_error

PLACEHOLDERS = ("name", "date", "run_id")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """Where the points are: a Zarr group (or array) path or fsspec URL."""

    url: str
    array: str = "points"
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    drop_invalid_rows: bool = False


class TLSSpec(_Strict):
    """Client certificate files for a ``tls://`` scheduler."""

    ca_file: str
    cert: str
    key: str | None = None


MAX_CONNECT_TIMEOUT_S = 86_400.0
"""The longest wait for a scheduler: a day."""


SCHEDULER_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss")
"""Dask comm protocols a scheduler address may name."""

_ADDRESS = re.compile(r"^(?:([a-z]+)://)?(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]@]+):(\d{1,5})/?$")


def check_scheduler_address(address: str) -> str:
    """A Dask scheduler address, ``[protocol://]host:port``, as given.

    Raises
    ------
    ValueError
        Naming what is wrong (checked without importing Dask).
    """
    if address.startswith("inproc://"):  # a cluster of threads in this very process
        return address
    found = _ADDRESS.match(address)
    if found is None:
        raise ValueError(
            f"{address!r} is not a Dask scheduler address (protocol://host:port, e.g. "
            "tcp://10.0.0.5:8786)"
        )
    protocol, port = found.group(1), int(found.group(3))
    if protocol is not None and protocol not in SCHEDULER_PROTOCOLS:
        raise ValueError(
            f"{address!r}: unknown protocol {protocol!r} (one of {', '.join(SCHEDULER_PROTOCOLS)})"
        )
    if not 0 < port < 65536:
        raise ValueError(f"{address!r}: port {port} is not 1-65535")
    return address


CLUSTER_KINDS = ("auto", "threads", "local", "local-cuda", "remote")


class AdaptSpec(_Strict):
    """Bounds of an adaptive cluster manager (``cluster.adapt``)."""

    minimum: int = Field(default=0, ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptSpec:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


MANAGER_CLASS = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
"""``package.module:ClassName``."""


class ClusterSpec(_Strict):
    """Where the job runs.

    ``auto`` (the default): threads of this process for a ``memory://`` store; an embedded
    cluster of ``n_workers`` processes if ``n_workers`` is given; the scheduler of Dask's
    configuration (``scheduler-address``, ``DASK_SCHEDULER_ADDRESS``) if one is set; threads
    of this process for an input that fits comfortably in memory, an embedded cluster above
    (see :func:`pipeline.jobs.cluster.resolve_cluster`). ``threads``: Dask's threaded
    scheduler in this process (no worker processes; what a ``memory://`` store needs).
    ``local``: an embedded cluster of CPU worker processes; ``local-cuda``: one worker per
    GPU; ``remote``: a running ``scheduler``;
    ``manager``: a Dask cluster manager (``class: "package.module:ClassName"``, e.g.
    dask-jobqueue's SLURMCluster) made with ``options``, scaled to ``scale`` workers or
    adaptive within ``adapt``, and closed after the job.

    A ``scheduler`` given without a ``kind`` means ``kind: remote``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["auto", "threads", "local", "local-cuda", "remote", "manager"] = "auto"
    n_workers: int | None = Field(default=None, ge=1)
    scheduler: str | None = None
    tls: TLSSpec | None = None
    connect_timeout: float = Field(default=30.0, gt=0, le=MAX_CONNECT_TIMEOUT_S)
    manager_class: str | None = Field(default=None, alias="class", pattern=MANAGER_CLASS.pattern)
    options: dict[str, Any] = Field(default_factory=dict)
    scale: int | None = Field(default=None, ge=1)
    adapt: AdaptSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _scheduler_means_remote(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("scheduler") is not None and "kind" not in data:
            return {**data, "kind": "remote"}
        return data

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_scheduler_address(value)

    def computes_here(self) -> bool:
        """Whether the job's tasks run on this machine's CPUs (threads, an embedded CPU
        cluster, or ``auto`` without a configured scheduler address)."""
        if self.kind == "auto":
            import dask

            return not dask.config.get("scheduler-address", None)
        return self.kind in ("threads", "local")

    @model_validator(mode="after")
    def _remote_needs_scheduler(self) -> ClusterSpec:
        if self.kind == "remote" and self.scheduler is None:
            raise ValueError("scheduler is required for kind 'remote'")
        if self.kind != "remote" and self.scheduler is not None:
            raise ValueError(f"scheduler applies to kind 'remote' only, not {self.kind!r}")
        return self

    @model_validator(mode="after")
    def _manager_fields(self) -> ClusterSpec:
        managed = {
            "class": self.manager_class is not None,
            "options": bool(self.options),
            "scale": self.scale is not None,
            "adapt": self.adapt is not None,
        }
        if self.kind != "manager":
            given = [name for name, present in managed.items() if present]
            if given:
                raise ValueError(f"{given[0]} applies to kind 'manager' only, not {self.kind!r}")
            return self
        if self.manager_class is None:
            raise ValueError("class is required for kind 'manager' (package.module:ClassName)")
        if self.scale is not None and self.adapt is not None:
            raise ValueError("give either scale or adapt, not both")
        return self


class OutputSpec(_Strict):
    """Where the clusters go; ``path`` may hold {name}, {date}, {run_id}."""

    path: str
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    overwrite: bool = False
    modes: bool = False
    checkpoint_every: int = Field(default=1, ge=0)

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        for _, field, _, _ in string.Formatter().parse(value):
            if field is not None and field not in PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {{{field}}}; use {{name}}, {{date}}, {{run_id}}"
                )
        return value


class ScheduleSpec(_Strict):
    """When to run: a cron expression (5 fields, or 6 with seconds first) and the retry policy."""

    cron: str
    timezone: str = "UTC"
    retries: int = Field(default=0, ge=0)
    retry_delay_s: float = Field(default=60.0, ge=0)
    misfire_grace_s: float = Field(default=3600.0, gt=0)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        cron_trigger(value, "UTC")  # raises ValueError naming what is wrong
        return value


class WorkflowSpec(_Strict):
    """One job: input, parameters, cluster, output and an optional schedule."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.]*$")
    input: InputSpec
    params: dict[str, Any] = Field(default_factory=dict)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    output: OutputSpec
    schedule: ScheduleSpec | None = None
    _source: str | None = PrivateAttr(default=None)  # the spec file (set by load_spec)

    @property
    def source(self) -> str | None:
        """The spec file this was read from."""
        return self._source

    def read_from(self, path: str | None) -> WorkflowSpec:
        """This spec, as read from the file ``path`` (its relative paths then resolve
        against that file's folder)."""
        self._source = path
        return self

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        values = params_values(value)
        MeanShiftParams(**values)  # unknown names and bad values fail here, as params.<field>
        return value

    def mean_shift_params(self, overrides: dict[str, Any] | None = None) -> MeanShiftParams:
        """The parameters, ``overrides`` (in :class:`MeanShiftParams` names) applied."""
        values = params_values(self.params) | (overrides or {})
        try:
            return MeanShiftParams(**values)
        except ValidationError as exc:
            raise ParameterError(describe_validation_error(exc)) from None

    def resolve(self, path: str) -> str:
        """A path of the spec, relative to its file's folder (URLs, absolute paths: as is)."""
        if "://" in path or os.path.isabs(path) or self.source is None:
            return path
        return os.path.join(os.path.dirname(os.path.abspath(self.source)), path)

    def output_path(self, run_id: str) -> str:
        """The output path of the run ``run_id`` (placeholders filled, relative to the spec)."""
        when = parse_run_id(run_id)
        filled = self.output.path.format(
            name=self.name, date=when.date().isoformat(), run_id=run_id
        )
        return self.resolve(filled)


def default_job_name(output_url: str) -> str:
    """A job's name from its output: the last path element without its extension."""
    last = output_url.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[0] or "meanshift"


def params_values(params: dict[str, Any]) -> dict[str, Any]:
    """Spec parameters in :class:`MeanShiftParams` names (``bandwidth: auto`` -> a rule)."""
    values = dict(params)
    bandwidth = values.get("bandwidth")
    if isinstance(bandwidth, str):
        if bandwidth.lower() not in BANDWIDTH_ESTIMATES:
            raise ValueError(
                f"bandwidth: {bandwidth!r} is neither a number nor auto/scott/silverman"
            )
        values["bandwidth"] = None
        values["bandwidth_rule"] = BANDWIDTH_ESTIMATES[bandwidth.lower()]
    return values


def cron_trigger(cron: str, timezone: str) -> Any:
    """An APScheduler ``CronTrigger`` from 5 fields (minute..weekday) or 6 (second first)."""
    from apscheduler.triggers.cron import CronTrigger

    fields = cron.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron {cron!r} needs 5 fields (or 6 with seconds first)")
    if len(fields) == 5:
        fields = ["0", *fields]
    second, minute, hour, day, month, day_of_week = fields
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=timezone,
        )
    except (ValueError, KeyError) as exc:
        raise ValueError(f"cron {cron!r}: {exc}") from None


RUN_ID_FORMAT = "%Y%m%dT%H%M%SZ"


def make_run_id(when: _dt.datetime | None = None) -> str:
    """The run id of a run started (or scheduled) at ``when`` (default: now), in UTC."""
    when = when or _dt.datetime.now(_dt.UTC)
    return when.astimezone(_dt.UTC).strftime(RUN_ID_FORMAT)


def parse_run_id(run_id: str) -> _dt.datetime:
    """The UTC time a run id stands for."""
    try:
        return _dt.datetime.strptime(run_id, RUN_ID_FORMAT).replace(tzinfo=_dt.UTC)
    except ValueError:
        raise ParameterError(f"run id {run_id!r} is not of the form 20261128T030000Z") from None


MAX_SPEC_BYTES = 256 * 1024
"""Largest spec file read."""
MAX_SPEC_NODES = 10_000
"""Most YAML nodes a spec may hold once its aliases are expanded."""


def check_expanded_size(root: yaml.Node | None, path: str) -> None:
    """Refuse a YAML document whose aliases expand beyond ``MAX_SPEC_NODES`` nodes (an
    "alias bomb": a few lines that stand for billions of values).

    Raises
    ------
    ParameterError
    """
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:  # an alias is the same node object again
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a node that contains itself counts once
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            total = 1
            for child in children:
                total = min(total + expanded(child), MAX_SPEC_NODES + 1)
            sizes[id(node)] = total
        return sizes[id(node)]

    if root is not None and expanded(root) > MAX_SPEC_NODES:
        raise ParameterError(
            f"spec {path}: more than {MAX_SPEC_NODES:,} values once its aliases are expanded"
        )


def read_spec_data(path: str) -> dict[str, Any]:
    """A spec file's YAML as a mapping, not yet validated.

    Raises
    ------
    ParameterError
        The file is missing, too large, an alias bomb, not YAML or not a mapping.
    """
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_SPEC_BYTES + 1)
        if len(text) > MAX_SPEC_BYTES:
            raise ParameterError(f"spec {path}: larger than {MAX_SPEC_BYTES // 1024} KiB")
        check_expanded_size(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ParameterError(f"spec file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).replace("\n", " ")
        raise ParameterError(f"spec {path}: not readable YAML: {reason}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"spec {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def load_spec(path: str) -> WorkflowSpec:
    """Read and validate a spec file.

    Raises
    ------
    ParameterError
        One line: the file, the first field and what is wrong with it (and how many more
        problems there are: :func:`spec_problems` lists them all).
    """
    data = read_spec_data(path)
    try:
        spec = WorkflowSpec(**data)
    except ValidationError as exc:
        raise ParameterError(f"spec {path}: {describe_spec_error(exc)}") from None
    return spec.read_from(path)


def spec_problems(path: str) -> tuple[WorkflowSpec | None, list[str]]:
    """A spec file and every problem it has, each one line naming the file and the field
    (the spec is None when there is any)."""
    try:
        data = read_spec_data(path)
    except ParameterError as exc:
        return None, [str(exc)]
    try:
        return WorkflowSpec(**data).read_from(path), []
    except ValidationError as exc:
        return None, [f"spec {path}: {problem}" for problem in spec_errors(exc)]


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a spec allows where ``loc`` sits (its parent section's fields)."""
    sections: dict[tuple[Any, ...], type[BaseModel]] = {
        (): WorkflowSpec,
        ("input",): InputSpec,
        ("output",): OutputSpec,
        ("cluster",): ClusterSpec,
        ("cluster", "tls"): TLSSpec,
        ("schedule",): ScheduleSpec,
        ("params",): MeanShiftParams,
    }
    model = sections.get(tuple(loc[:-1]))
    fields = {} if model is None else model.model_fields
    return [field.alias or name for name, field in fields.items()]


def spec_errors(exc: ValidationError) -> list[str]:
    """Every validation error of a spec, each one line naming the field; an unknown key
    close to a known one says which ("did you mean ...?")."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(str(part) for part in loc)
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _section_keys(loc), n=1, cutoff=0.7)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{where}: unknown key{hint}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return problems


def describe_spec_error(exc: ValidationError) -> str:
    """The first validation error of a spec as one line naming the field (and how many
    more there are)."""
    problems = spec_errors(exc)
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more: meanshift validate lists them)" if more else "")
