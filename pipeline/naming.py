"""Names of a job's Dask tasks: a per-job tag first, so each job is recognisable on the dashboard.

The dashboard groups tasks by key prefix (``dask.utils.key_split``): the first word of
a key, then its following alphabetic words. Every task this package builds is named
``<tag>-<stage>-<token>``, so the dashboard shows ``<tag>-<stage>`` (for example
``seed_demo-blur``) and two jobs on one cluster never share or confuse tasks.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from typing import Any

DEFAULT_TAG = "meanshift"

_tag: contextvars.ContextVar[str] = contextvars.ContextVar("meanshift_job_tag", default=DEFAULT_TAG)


def clean_tag(text: str) -> str:
    """A key-prefix-safe tag: letters, digits, ``_`` and ``.``, starting with a letter."""
    tag = re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.") or DEFAULT_TAG
    return tag if tag[0].isalpha() else f"ms_{tag}"


@contextlib.contextmanager
def job_tag(text: str) -> Iterator[str]:
    """Name the Dask tasks built inside this block after ``text`` (cleaned); yields the tag."""
    token = _tag.set(clean_tag(text))
    try:
        yield _tag.get()
    finally:
        _tag.reset(token)


def task_name(stage: str, *parts: Any) -> str:
    """``<tag>-<stage>-<token of parts and tag>``: one key name per distinct input.

    ``stage`` must be alphabetic and not 8 letters starting with a-f, which
    ``key_split`` takes for a hash and drops from the prefix.
    """
    tag = _tag.get()
    from dask.base import tokenize  # here: naming a job needs no Dask

    return f"{tag}-{stage}-{tokenize(tag, *parts)}"
