"""Errors a user can cause, each with the exit code the CLI returns for it.

Exit codes
----------
1  unexpected internal error (a bug: please report it)
2  invalid parameters or command-line usage
3  unusable input data (missing store, wrong shape or dtype, NaN/Inf)
4  output problem (exists without ``--overwrite``, not writable)
5  Dask cluster problem (scheduler unreachable, workers lost)
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class PipelineError(Exception):
    """Base class of the errors meant for users: the message is one line.

    The message names the parameters it is about as ``{name}`` placeholders, so
    that each door words them its own way: ``str(error)`` in the library's terms
    (``n_dims``; ``overwrite=True`` for a value that changes the outcome), the
    command line as its options (``--dims``, ``--overwrite``: :meth:`worded`).

    Parameters
    ----------
    message : str
        One line; ``{name}`` for each parameter named in ``parameters``.
    **parameters
        The parameters the message names: ``None`` for the parameter itself, or the
        value that would change the outcome (``overwrite=True``).
    """

    exit_code: int = 1

    def __init__(self, message: str, **parameters: Any) -> None:
        self.template = message
        self.parameters = parameters
        super().__init__(self.worded(_library_name))

    def worded(self, name: Callable[[str, Any], str]) -> str:
        """The message with each parameter written as ``name(parameter, value)``."""
        if not self.parameters:
            return self.template
        return self.template.format_map({p: name(p, v) for p, v in self.parameters.items()})

    def __reduce__(self) -> tuple[Any, ...]:  # Dask sends errors between processes
        return (_rebuild, (type(self), self.template, self.parameters))


def literal(text: str) -> str:
    """``text`` (a path, another error's message) to stand as it is in a message that
    names parameters as ``{name}``."""
    return text.replace("{", "{{").replace("}", "}}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, pointing at the first caller outside this package (the user's line),
    however deep in the package the warning arises."""
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _library_name(parameter: str, value: Any) -> str:
    return parameter if value is None else f"{parameter}={value!r}"


def _rebuild(cls: type[PipelineError], message: str, parameters: dict[str, Any]) -> PipelineError:
    return cls(message, **parameters)


PERMANENT_EXIT_CODES = frozenset({2, 3, 4})
"""Exit codes of failures a retry cannot mend: parameters, input data, output."""


def is_permanent(error: BaseException) -> bool:
    """Whether retrying cannot mend ``error``: the same parameters, input and output fail
    the same way again (a cluster problem or an unexpected error may pass)."""
    return isinstance(error, PipelineError) and error.exit_code in PERMANENT_EXIT_CODES


class ParameterError(PipelineError, ValueError):
    """A parameter value is invalid."""

    exit_code = 2


class InputDataError(PipelineError, ValueError):
    """The input store or array cannot be clustered."""

    exit_code = 3


class InvalidRowsError(InputDataError):
    """Some rows of the points hold NaN or Inf."""


class NoPointNearSeedsError(InputDataError):
    """No seed had a point within the bandwidth: nothing to make clusters of."""

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = bandwidth
        super().__init__(
            f"no point was within bandwidth={bandwidth:g} of any seed; "
            "try other seeds or a larger bandwidth"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.bandwidth,))


class TooManyClustersWarning(UserWarning):
    """Nearly as many clusters as points: the bandwidth is probably too small."""


class OutputError(PipelineError):
    """The output location cannot be written."""

    exit_code = 4


class ClusterError(PipelineError):
    """The Dask cluster cannot be reached or failed."""

    exit_code = 5
