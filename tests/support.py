"""Helpers shared by the tests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from distributed import Client

from pipeline.jobs.cluster import tls_security

CLI = [sys.executable, "-m", "pipeline.cli"]
"""The ``meanshift`` command line of the interpreter running the tests."""


def meanshift(
    *args: str, cwd: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``meanshift ARGS`` in a new process; its exit code and captured text output."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def tree_digest(path: str) -> str:
    """Hash of every file under a folder (names and contents): proves nothing was modified."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def write_tls_files(folder: str) -> tuple[str, str, str]:
    """A throw-away CA and one certificate signed by it for 127.0.0.1 / localhost.

    Returns the paths of (CA certificate, certificate, private key) in PEM.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("meanshift test CA", ca_key, "meanshift test CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate("127.0.0.1", key, "meanshift test CA", ca_key, ca=False)
    paths = [os.path.join(folder, name) for name in ("ca.pem", "cert.pem", "key.pem")]
    pem = serialization.Encoding.PEM
    contents = [
        ca_cert.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    ]
    for path, content in zip(paths, contents, strict=True):
        with open(path, "wb") as handle:
            handle.write(content)
    return paths[0], paths[1], paths[2]


DASK = os.path.join(os.path.dirname(sys.executable), "dask")


class StandingCluster:
    """A scheduler and two single-threaded workers, each its own process."""

    def __init__(
        self,
        folder: str,
        tls: tuple[str, str, str] | None = None,
        workers: int = 2,
        worker_options: tuple[str, ...] = (),
    ) -> None:
        self.tls = tls
        self.tls_args = []
        if tls is not None:
            self.tls_args = ["--tls-ca-file", tls[0], "--tls-cert", tls[1], "--tls-key", tls[2]]
        os.makedirs(folder, exist_ok=True)
        scheduler_file = os.path.join(folder, "scheduler.json")
        protocol = ["--protocol", "tls"] if tls else []
        command = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0"]
        command += ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", scheduler_file]
        command += [*protocol, *self.tls_args]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.processes = [subprocess.Popen(command, **quiet)]
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give the writer a moment
        with open(scheduler_file) as handle:
            self.address = json.load(handle)["address"]
        for i in range(workers):
            command = [DASK, "worker", self.address, "--nworkers", "1", "--nthreads", "1"]
            command += ["--no-dashboard", "--preload", "pipeline.worker", *worker_options]
            command += ["--local-directory", os.path.join(folder, f"worker-{i}"), *self.tls_args]
            self.processes.append(subprocess.Popen(command, **quiet))
        if not worker_options:
            with self.client() as client:
                client.wait_for_workers(workers, timeout=120)

    def client(self) -> Client:
        security = None if self.tls is None else tls_security(*self.tls)
        return Client(self.address, security=security, timeout=30)

    def close(self) -> None:
        """Stop the workers, then the scheduler (a worker whose scheduler is gone first
        waits for it to come back)."""
        scheduler, workers = self.processes[0], self.processes[1:]
        for group in (workers, [scheduler]):
            for process in group:
                process.terminate()
            for process in group:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def wait_for_checkpoint(run: subprocess.Popen, out: str, ready, timeout: float = 120.0) -> dict:
    """Poll ``out``'s ``checkpoint`` attribute until ``ready(it)`` holds, ``run`` ends, or
    ``timeout`` passes. Returns the last attribute read."""
    meta = os.path.join(out, "zarr.json")
    deadline, saved = time.monotonic() + timeout, {}
    while not ready(saved) and time.monotonic() < deadline and run.poll() is None:
        try:
            with open(meta) as handle:
                saved = json.load(handle)["attributes"].get("checkpoint") or {}
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return saved


def kill_driver_once(command: list[str], out: str, ready, timeout: float = 120.0) -> dict:
    """Start ``command`` (a ``meanshift run`` writing ``out``); SIGKILL it and its embedded
    cluster once ``ready(checkpoint attribute)`` holds. Returns that attribute."""
    driver = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    saved = wait_for_checkpoint(driver, out, ready, timeout)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded cluster, mid-run
    driver.wait()
    return saved
