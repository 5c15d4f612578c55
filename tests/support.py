"""Helpers shared by the tests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

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


def local_attributes(out: str) -> dict:
    """The attributes of the Zarr group at the local path ``out``."""
    with open(os.path.join(out, "zarr.json")) as handle:
        return json.load(handle)["attributes"]


def wait_for_checkpoint(
    run: subprocess.Popen, out: str, ready, timeout: float = 120.0, attributes=local_attributes
) -> dict:
    """Poll ``out``'s ``checkpoint`` attribute (read by ``attributes(out)``) until
    ``ready(it)`` holds, ``run`` ends, or ``timeout`` passes. Returns the last one read."""
    deadline, saved = time.monotonic() + timeout, {}
    while not ready(saved) and time.monotonic() < deadline and run.poll() is None:
        try:
            saved = attributes(out).get("checkpoint") or {}
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    return saved


def kill_driver_once(
    command: list[str], out: str, ready, timeout: float = 120.0, attributes=local_attributes
) -> dict:
    """Start ``command`` (a ``meanshift run`` writing ``out``); SIGKILL it and its embedded
    cluster once ``ready(checkpoint attribute)`` holds. Returns that attribute."""
    driver = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    saved = wait_for_checkpoint(driver, out, ready, timeout, attributes)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded cluster, mid-run
    driver.wait()
    return saved


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """A real S3-compatible server (moto in server mode) on 127.0.0.1, in its own process.

    Requests are authenticated: only the key of the one user created at start (``key``,
    ``secret``), allowed every S3 action, is accepted.
    """

    REGION = "us-east-1"

    def __init__(self) -> None:
        import boto3

        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        anyone = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=self.REGION, **anyone)
        iam.create_user(UserName="tests")
        policy = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        document = json.dumps({"Version": "2012-10-17", "Statement": [policy]})
        iam.put_user_policy(UserName="tests", PolicyName="s3", PolicyDocument=document)
        created = iam.create_access_key(UserName="tests")["AccessKey"]
        self.key, self.secret = created["AccessKeyId"], created["SecretAccessKey"]
        request = urllib.request.Request(  # from now on every request must be signed
            self.endpoint + "/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=30).read()
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.REGION,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    def options(self, secret: str | None = None) -> dict:
        """fsspec (s3fs) storage options reaching this server (with another secret: refused)."""
        return {
            "key": self.key,
            "secret": secret or self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.REGION},
        }

    def environment(self) -> dict:
        """This process's environment plus the variables that reach this server."""
        return dict(
            os.environ,
            AWS_ACCESS_KEY_ID=self.key,
            AWS_SECRET_ACCESS_KEY=self.secret,
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_DEFAULT_REGION=self.REGION,
        )

    def bucket(self) -> str:
        """A new, empty bucket's name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, str]:
        """Every object of ``bucket``: key -> ETag."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}

    def read(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class ClusterThatFailsToStart:
    """A Dask cluster manager whose start fails, as a batch-system one does where there is
    no batch system (a ``kind: manager`` spec names it ``tests.support:ClusterThatFailsToStart``).
    """

    def __init__(self, **options: object) -> None:
        raise RuntimeError("sbatch: command not found")
