"""Where stores are: local paths and fsspec URLs, told apart and checked without importing
Zarr, fsspec or Dask (so that mistakes are refused before any heavy import)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ParameterError, first_line, literal

StorageOptions = dict[str, Any]
"""fsspec options of a remote store (endpoint, credentials, ...): never recorded anywhere."""

PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})
"""fsspec protocols whose stores live in one process: Dask worker processes cannot see them."""


def is_local(url: str) -> bool:
    """Whether ``url`` is a local path or a ``file://`` URL."""
    return "://" not in url or url.startswith("file://")


def protocol(url: str) -> str:
    """The fsspec protocol of a URL (``file`` for local paths)."""
    return "file" if is_local(url) else url.split("://", 1)[0].split("::")[0].lower()


def zarr_options(url: str, storage_options: StorageOptions | None) -> StorageOptions | None:
    """Storage options as zarr takes them: None for local paths and empty options."""
    return dict(storage_options) if storage_options and not is_local(url) else None


def check_location(url: str, storage_options: StorageOptions | None, what: str) -> None:
    """Refuse a location that cannot be used as given.

    Raises
    ------
    ParameterError
        Storage options given for a local path, or a password written into the URL
        (it would end up in attributes and logs: give it in storage options or the
        environment).
    """
    if storage_options and is_local(url):
        raise ParameterError(
            f"storage options apply to fsspec URLs (s3://, gs://, ...); the {what} "
            f"{literal(url)} is a local path"
        )
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if ":" in authority.rpartition("@")[0]:
        raise ParameterError(
            f"the {what} URL holds a password; give credentials in storage options or the "
            "environment, where they are never recorded"
        )


def local_path(url: str) -> str:
    """The path of a local location (a ``file://`` URL's path; a path as it is)."""
    return url[len("file://") :] if url.startswith("file://") else url


def absolute(url: str) -> str:
    """A local path or ``file://`` URL as an absolute path (Dask workers may run in another
    folder; ``file://`` and plain paths then behave alike); other URLs as they are."""
    return os.path.abspath(local_path(url)) if is_local(url) else url


def access_denied(what: str, url: str, exc: BaseException) -> str:
    """The one line saying a store refused this process's credentials."""
    detail = first_line(exc)
    verb = "open input" if what == "input" else "write output"
    return (
        f"cannot {verb} {literal(url)}: access denied ({literal(detail)}): check the "
        "credentials (storage options or the environment)"
    )
