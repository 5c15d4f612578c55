"""One writer per output: a lease file beside the output, taken atomically before any write.

``<output>.lease`` holds the owner's token, host, process id and the time of its last
heartbeat; a thread renews it every ``HEARTBEAT_S`` seconds. Another run of the same
output is refused in one line while the lease is live, and takes it over when it is
stale: no heartbeat for ``STALE_AFTER_S`` seconds, or its owner was a process of this
host that no longer exists (a crashed or killed run). The lease sits beside the output,
not in it, so that replacing the output (``overwrite``) cannot remove it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import OutputError, first_line, literal
from .locations import access_denied, is_local, local_path

HEARTBEAT_S = 5.0
"""Seconds between two renewals of a held lease."""
STALE_AFTER_S = 60.0
"""A lease not renewed for this long belongs to a run that is gone."""


def lease_url(output_url: str) -> str:
    """Where the lease of ``output_url`` lives: beside it, named ``<output>.lease``; a local
    output's path resolved first (``./``, ``file://``, symlinks), so that every name of one
    output takes the same lease."""
    if is_local(output_url):
        return os.path.realpath(local_path(output_url)) + ".lease"
    return output_url.rstrip("/") + ".lease"


class OutputLease:
    """The right to write one output, held from :meth:`acquire` to :meth:`release`.

    Parameters
    ----------
    output_url : str
        Path or fsspec URL of the output.
    storage_options : dict, optional
        For fsspec, where the output is remote.
    """

    def __init__(self, output_url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.output_url = output_url
        self.url = lease_url(output_url)
        try:
            self.fs, self.path = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except Exception as exc:  # unknown protocols, missing filesystem packages
            raise OutputError(
                f"cannot write output {literal(output_url)}: {first_line(exc)}"
            ) from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _record(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
            }
        ).encode()

    def acquire(self) -> None:
        """Take the lease (taking over a stale one) and start renewing it.

        Raises
        ------
        OutputError
            Another run holds a live lease on the output, or the lease cannot be written.
        """
        if self._is_folder():
            raise OutputError(
                f"cannot take the lease {literal(self.url)} of output "
                f"{literal(self.output_url)}: it is a folder, not a lease file (remove it)"
            )
        for _ in range(3):
            if self._create():
                break
            holder = self._read()
            if holder is not None and not _stale(holder):
                raise OutputError(busy_message(self.output_url, holder))
            self._remove_stale(holder)
        else:
            raise OutputError(f"cannot take the lease {self.url}: other runs keep taking it")
        self._beating = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._beating.start()

    def _is_folder(self) -> bool:
        try:
            return bool(self.fs.isdir(self.path))
        except Exception:  # an unreachable store: taking the lease says why
            return False

    def _create(self) -> bool:
        """Write the lease only if there is none, whole and at once; whether it was written.

        A local lease is written to a private file and then hard-linked into place (which
        fails if a lease exists), so no reader ever sees it half written; elsewhere the
        store's exclusive create (``xb``) writes it in one request.
        """
        try:
            if not self.local:
                return self._create_remote()
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            private = self._write_private()
            try:
                os.link(private, self.path)
            finally:
                os.unlink(private)
        except FileExistsError:
            return False
        except PermissionError as exc:
            raise OutputError(access_denied("output", self.output_url, exc)) from None
        except OSError as exc:
            raise OutputError(
                f"cannot write output {literal(self.output_url)}: {exc.strerror or exc}"
            ) from None
        except Exception as exc:  # fsspec protocol errors, missing filesystem packages
            raise OutputError(
                f"cannot write output {literal(self.output_url)}: {first_line(exc)}"
            ) from None
        return True

    def _create_remote(self) -> bool:
        """Exclusive create where the filesystem offers it; else (best effort) write the lease
        if none is there."""
        try:
            with self.fs.open(self.path, "xb") as handle:
                handle.write(self._record())
            return True
        except (NotImplementedError, ValueError):  # no exclusive create ("xb") here
            self.fs.invalidate_cache(self.path)
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, self._record())
            return True

    def _write_private(self) -> str:
        """This run's record in a file of its own beside the lease; its path."""
        private = f"{self.path}.{self.token}"
        with open(private, "wb") as handle:
            handle.write(self._record())
        return private

    def _renew(self) -> None:
        if self.local:
            os.replace(self._write_private(), self.path)  # atomic: never half written
        else:
            self.fs.pipe_file(self.path, self._record())

    def _read(self) -> dict[str, Any] | None:
        """The lease's record, None if there is none; an unreadable one counts as stale.

        Read from the store itself: a listing the filesystem cached before the lease was
        written (s3fs keeps them) would otherwise say it is not there.
        """
        self.fs.invalidate_cache(self.path)
        try:
            with self.fs.open(self.path, "rb") as handle:
                record = json.loads(handle.read())
            return record if isinstance(record, dict) else {}
        except FileNotFoundError:
            return None
        except Exception:
            return {}

    def _remove_stale(self, holder: dict[str, Any] | None) -> None:
        """Remove the lease if it still holds ``holder``'s record (another run may have
        taken it over since)."""
        if holder is None:
            return
        current = self._read()
        if current is None or current.get("token") != holder.get("token"):
            return
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = self._read()
            if holder is None or holder.get("token") != self.token:
                self.lost = "another run took over its lease" if holder else "its lease vanished"
                return
            try:
                self._renew()
            except Exception as exc:  # a passing storage error: try again at the next beat
                self.lost = None if _transient(exc) else f"its lease cannot be renewed: {exc}"

    def check(self) -> None:
        """Refuse to go on if the lease was lost (before marking the output complete).

        Raises
        ------
        OutputError
        """
        holder = self._read()
        if self.lost is None and (holder is None or holder.get("token") != self.token):
            self.lost = "another run took over its lease" if holder else "its lease vanished"
        if self.lost is not None:
            raise OutputError(
                f"output {literal(self.output_url)} is not marked complete: {self.lost}"
            )

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still this run's."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass


def live_holder(
    output_url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The record of the run that holds a live lease on ``output_url``, or None (no lease,
    a stale one, or none that can be read: taking the lease says why)."""
    try:
        lease = OutputLease(output_url, storage_options)
        holder = lease._read() if not lease._is_folder() else None
    except Exception:
        return None
    return holder if holder and not _stale(holder) else None


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, ConnectionError))


def _stale(holder: dict[str, Any]) -> bool:
    """Whether a lease's owner is gone: no heartbeat for ``STALE_AFTER_S``, or a process of
    this host that no longer runs."""
    try:
        age = time.time() - float(holder["heartbeat"])
        host, pid = str(holder["host"]), int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    if abs(age) > STALE_AFTER_S:  # a heartbeat far in the future is no run's either
        return True
    return host == socket.gethostname() and not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def busy_message(output_url: str, holder: dict[str, Any]) -> str:
    """Why an output held by a live lease is refused (one line)."""
    age = time.time() - float(holder.get("heartbeat", time.time()))
    return (
        f"output {literal(output_url)} is being written by another run (process "
        f"{holder.get('pid')} on {holder.get('host')}, heartbeat {age:.0f} s ago); wait for it "
        f"to end (its lease {literal(lease_url(output_url))} goes stale {STALE_AFTER_S:.0f} s "
        "after it stops)"
    )
