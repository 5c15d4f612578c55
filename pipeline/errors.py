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


class PipelineError(Exception):
    """Base class of the errors meant for users: the message is one line."""

    exit_code: int = 1


class ParameterError(PipelineError, ValueError):
    """A parameter value is invalid."""

    exit_code = 2


class InputDataError(PipelineError, ValueError):
    """The input store or array cannot be clustered."""

    exit_code = 3


class InvalidRowsError(InputDataError):
    """Some rows of the points hold NaN or Inf."""


class OutputError(PipelineError):
    """The output location cannot be written."""

    exit_code = 4


class ClusterError(PipelineError):
    """The Dask cluster cannot be reached or failed."""

    exit_code = 5
