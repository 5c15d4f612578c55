"""Errors carry facts; each door words them: the library by parameter names, the CLI by options."""

from __future__ import annotations

import pickle

import pytest

from pipeline.errors import OutputError, ParameterError
from pipeline.io.datasets import write_blobs

from .support import meanshift


def test_the_library_names_parameters_and_the_cli_names_options(tmp_path):
    data = str(tmp_path / "data.zarr")
    write_blobs(data, 2, 10, 1.0, 2, seed=0)
    with pytest.raises(OutputError) as raised:
        write_blobs(data, 2, 10, 1.0, 2, seed=0)
    assert str(raised.value) == f"output {data} already exists; pass overwrite=True to replace it"
    done = meanshift("generate", "-o", data, "--clusters", "2", "--per-cluster", "10")
    assert done.returncode == 4
    assert done.stderr.strip() == (
        f"meanshift: error: output {data} already exists; pass --overwrite to replace it"
    )
    with pytest.raises(ParameterError) as raised:
        write_blobs(str(tmp_path / "other.zarr"), 0, 10, 1.0, 2)
    assert str(raised.value) == "n_clusters, per_cluster and n_dims must be at least 1"
    done = meanshift("generate", "-o", str(tmp_path / "x.zarr"), "--spread", "-1")
    assert done.returncode == 2
    assert done.stderr.strip() == "meanshift: error: --spread must be a positive number"


def test_a_path_with_braces_stays_as_it_is(tmp_path):
    data = str(tmp_path / "{odd}.zarr")
    write_blobs(data, 2, 10, 1.0, 2, seed=0)
    with pytest.raises(OutputError, match=r"\{odd\}\.zarr already exists; pass overwrite=True"):
        write_blobs(data, 2, 10, 1.0, 2, seed=0)


def test_errors_keep_their_wording_across_processes():
    error = ParameterError("{chunk} must be at least 1", chunk=None)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ParameterError and str(copy) == "chunk must be at least 1"
    assert copy.worded(lambda name, value: f"--{name}") == "--chunk must be at least 1"


def test_tls_errors_name_the_function_parameters():
    from pipeline.jobs.cluster import tls_security

    with pytest.raises(ParameterError) as raised:
        tls_security(None, "cert.pem", None)
    assert str(raised.value) == (
        "TLS needs at least a CA file and a certificate (ca_file, cert_file)"
    )
