"""An output's lifecycle as one state machine: read what is there once, decide, then act.

:func:`inspect` reads an output location once (what is there, its status, attributes and
saved state, and whether a complete one reads back whole); :func:`decide` is a pure
function of that state and a :class:`Request` that says what a job may do with it:

========================================  ==========================================
what is at the location                    decision
========================================  ==========================================
the input's Zarr store (or inside it)      refuse, whatever else is asked
anything another run's live lease holds    refuse (the lease says by whom)
nothing                                    create
something that is not a meanshift output   refuse (never replaced, even to overwrite)
a meanshift output, ``overwrite``          replace
complete, this job's, every array whole    reuse (scheduled runs: any complete output)
complete but damaged                       refuse (scheduled runs: replace)
running or failed, this job's saved state  resume
computed from other content of the input   refuse
failed                                     replace
anything else                              refuse ("already exists")
========================================  ==========================================

Every refusal comes before anything is written anywhere (the lease included); the job,
``meanshift status`` and ``meanshift report`` all go through :func:`inspect`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import zarr

from ..errors import InputDataError, OutputError, first_line, literal
from . import store
from .lease import busy_message, live_holder
from .locations import StorageOptions, is_local, local_path, zarr_options


def location_key(url: str, storage_options: StorageOptions | None = None) -> str:
    """The one name of an output location, however it was typed: local paths absolute with
    symlinks resolved (``./out.zarr``, ``file://``, a link to it: one name); URLs as their
    filesystem names them, without a trailing slash.

    Raises
    ------
    OutputError
        ``url`` names no filesystem fsspec knows.
    """
    if is_local(url):
        return "file://" + os.path.realpath(local_path(url))
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as exc:  # unknown protocols, missing filesystem packages
        raise OutputError(f"cannot write output {literal(url)}: {first_line(exc)}") from None
    kind = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{kind}://{path.rstrip('/')}"


class Status(enum.StrEnum):
    """What :func:`inspect` found, as ``meanshift status`` prints it."""

    MISSING = "missing"  # nothing at the location
    FOREIGN = "unknown"  # something that is not a meanshift output
    RUNNING = store.STATUS_RUNNING
    FAILED = store.STATUS_FAILED
    COMPLETE = store.STATUS_COMPLETE  # marked complete and every array verified
    DAMAGED = "damaged"  # marked complete, but an array does not read back whole


@dataclass(frozen=True)
class OutputState:
    """An output location as :func:`inspect` read it."""

    url: str
    location: str  # location_key(url)
    status: Status
    attributes: dict[str, Any] = field(default_factory=dict)
    damage: str | None = None  # what is wrong with a complete output's arrays
    has_modes: bool = False
    overlaps_input: bool = False
    writer: dict[str, Any] | None = None  # the record of another run's live lease on it

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the job whose result this is (complete outputs)."""
        return self.attributes.get("fingerprint")

    @property
    def saved_fingerprint(self) -> str | None:
        """The fingerprint of the job whose saved state this holds, if any."""
        return (self.attributes.get("checkpoint") or {}).get("fingerprint")

    @property
    def input(self) -> dict[str, Any]:
        """What the output says of its input: ``url``, ``array``, ``shape``, ``content``."""
        return dict(self.attributes.get("input") or {})

    @property
    def error(self) -> str | None:
        """Why a failed run failed, as it recorded."""
        return self.attributes.get("error")


def inspect(
    url: str,
    storage_options: StorageOptions | None = None,
    input_url: str | None = None,
    input_options: StorageOptions | None = None,
    verify: bool = True,
    lease_token: str | None = None,
) -> OutputState:
    """Read what is at an output location, once, writing nothing.

    Parameters
    ----------
    url : str
        Path or fsspec URL of the output.
    storage_options : dict, optional
        fsspec options of a remote output.
    input_url, input_options : optional
        The job's input, to tell whether the output would write into its store.
    verify : bool
        Read a complete output's arrays back (:func:`.store.damage`); without it a
        complete output counts as whole.
    lease_token : str, optional
        The lease this run holds on the output (not another run's).

    Raises
    ------
    OutputError
        The location names no known filesystem, or its store cannot be reached.
    """
    location = location_key(url, storage_options)
    overlaps = input_url is not None and store.overlaps_input(
        url, input_url, storage_options, input_options
    )
    writer = None if overlaps else live_holder(url, storage_options)
    if writer is not None and writer.get("token") == lease_token:
        writer = None
    state = OutputState(url, location, Status.MISSING, overlaps_input=overlaps, writer=writer)
    if not store.location_exists(url, storage_options):
        return state
    try:
        group = zarr.open_group(url, mode="r", storage_options=zarr_options(url, storage_options))
        attributes = group.attrs.asdict()
    except Exception:  # not a Zarr group, or its metadata does not parse
        return dataclasses.replace(state, status=Status.FOREIGN)
    marked = attributes.get("status")
    if marked not in (store.STATUS_RUNNING, store.STATUS_FAILED, store.STATUS_COMPLETE):
        return dataclasses.replace(state, status=Status.FOREIGN, attributes=attributes)
    status, problem = Status(marked), None
    if marked == store.STATUS_COMPLETE and verify:
        problem = store.damage(group)
        status = Status.DAMAGED if problem is not None else status
    try:
        has_modes = "modes" in group.array_keys()
    except Exception:  # a member's metadata does not parse: damage() says which
        has_modes = False
    return dataclasses.replace(
        state, status=status, attributes=attributes, damage=problem, has_modes=has_modes
    )


@dataclass(frozen=True)
class Request:
    """What a job asks of its output location.

    ``any_complete``: a complete output counts whatever job wrote it, and anything else of
    ours is replaced (a scheduled run's own output, named by its run id).
    """

    fingerprint: str
    input_url: str
    input_array: str
    input_content: str | None
    overwrite: bool = False
    modes: bool = False
    any_complete: bool = False


class Action(enum.Enum):
    """What a job does with its output location."""

    REUSE = "reuse"  # read back the complete result
    RESUME = "resume"  # reopen, continue from the saved state
    CREATE = "create"  # nothing there: create it
    REPLACE = "replace"  # remove what is there, create it
    REFUSE = "refuse"  # write nothing; say why


@dataclass(frozen=True)
class Decision:
    """An :class:`Action` and, for ``REFUSE``, the one-line reason (``{overwrite}`` in it
    names the option that would change the outcome)."""

    action: Action
    reason: str = ""

    def refusal(self) -> OutputError:
        """The error a refusal raises."""
        return OutputError(self.reason, overwrite=True)


def decide(state: OutputState, request: Request) -> Decision:
    """What a job does with its output (the module's table), from the state alone."""
    url = literal(state.url)
    if state.overlaps_input:
        return _refuse(
            f"output {url} would overwrite or nest with the input "
            f"{literal(request.input_url)} (its Zarr store is never written to)"
        )
    if state.writer is not None:
        return _refuse(busy_message(state.url, state.writer))
    if state.status is Status.MISSING:
        return Decision(Action.CREATE)
    if state.status is Status.FOREIGN:
        return _refuse(f"output {url} exists and is not a meanshift output; not replacing it")
    if request.overwrite:
        return Decision(Action.REPLACE)
    return _decide_ours(state, request)


def _decide_ours(state: OutputState, request: Request) -> Decision:
    """What to do with a meanshift output that is not to be overwritten."""
    if state.status in (Status.COMPLETE, Status.DAMAGED):
        done = _decide_complete(state, request)
        if done is not None:
            return done
    elif request.any_complete:
        return Decision(Action.REPLACE)
    elif state.saved_fingerprint == request.fingerprint:
        return Decision(Action.RESUME)
    marked = state.attributes["status"]
    if _other_content(state, request):
        return _refuse(
            f"output {literal(state.url)} (status '{marked}') was computed from other "
            f"content of the input {literal(request.input_url)}, which changed since; pass "
            "{overwrite} to compute it again"
        )
    if state.status is Status.FAILED:
        return Decision(Action.REPLACE)
    return _refuse(
        f"output {literal(state.url)} already exists (status '{marked}'); pass "
        "{overwrite} to replace it"
    )


def _decide_complete(state: OutputState, request: Request) -> Decision | None:
    """Reuse, replace or refuse an output marked complete; None: as any other of ours."""
    if state.status is Status.DAMAGED:
        if request.any_complete:
            return Decision(Action.REPLACE)
        return _refuse(
            f"output {literal(state.url)} is marked complete but damaged ({state.damage}); "
            "run its job again with {overwrite}"
        )
    if request.any_complete:
        return Decision(Action.REUSE)
    if state.fingerprint == request.fingerprint and (state.has_modes or not request.modes):
        return Decision(Action.REUSE)
    return None


def _other_content(state: OutputState, request: Request) -> bool:
    """Whether the output holds this input's clusters from other content of it."""
    before = state.input
    same_input = [before.get("url"), before.get("array")] == [
        request.input_url,
        request.input_array,
    ]
    if state.status is Status.FAILED or not same_input or "content" not in before:
        return False
    return before["content"] != request.input_content


def _refuse(reason: str) -> Decision:
    return Decision(Action.REFUSE, reason)


def open_output(
    state: OutputState,
    decision: Decision,
    n_points: int,
    row_chunk: int,
    attributes: dict[str, Any],
    storage_options: StorageOptions | None = None,
) -> zarr.Group:
    """Act on a decision to write: the output group, reopened (``RESUME``) or created with
    ``status: "running"`` and ``attributes`` (``CREATE``, ``REPLACE``).

    Raises
    ------
    OutputError
        It cannot be written.
    """
    if decision.action is Action.RESUME:
        return store.reopen_output(state.url, storage_options)
    if decision.action not in (Action.CREATE, Action.REPLACE):
        raise ValueError(f"nothing to open for {decision.action}")
    return store.create_output(
        state.url,
        n_points,
        row_chunk,
        replace=decision.action is Action.REPLACE,
        attributes=attributes,
        storage_options=storage_options,
    )


def complete_result(state: OutputState, storage_options: StorageOptions | None = None) -> Any:
    """The output group of a complete state, open read-only (verified by :func:`inspect`).

    Raises
    ------
    InputDataError
        Nothing of ours is there, or the output is not complete (a failed run's reason
        said).
    OutputError
        It is marked complete but damaged.
    """
    url = literal(state.url)
    if state.status is Status.COMPLETE:
        return store.open_result(state.url, storage_options, verified=True)
    if state.status is Status.DAMAGED:
        raise OutputError(
            f"output {url} is marked complete but damaged ({state.damage}); run its job "
            "again with {overwrite}",
            overwrite=True,
        )
    if state.status in (Status.MISSING, Status.FOREIGN):
        raise InputDataError(f"no meanshift output at {url}")
    reason = f": {first_line(state.error)}" if state.error else ""
    raise InputDataError(f"output {url} is not complete (status: {state.status.value}{reason})")


def current_input(
    state: OutputState, input_options: StorageOptions | None = None
) -> store.InputInfo:
    """The input a complete output was computed from, opened read-only, as long as it still
    holds what the output was computed from (same shape, same content stamp).

    Raises
    ------
    InputDataError
        The input cannot be opened (gone, not Zarr, ...).
    OutputError
        It changed since: the output's clusters are not those of the points there now.
    """
    recorded = state.input
    source = store.open_points(
        str(recorded.get("url")), str(recorded.get("array", store.DEFAULT_ARRAY)), input_options
    )
    stamp = recorded.get("content")
    shape = list(source.array.shape)
    if shape != recorded.get("shape") or (
        stamp is not None and store.content_stamp(source) != stamp
    ):
        raise OutputError(
            f"output {literal(state.url)} was computed from other content of the input "
            f"{literal(source.url)}, which changed since; run its job again with {{overwrite}}",
            overwrite=True,
        )
    return source
