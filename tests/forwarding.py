"""A service that goes away on purpose, for tests: ``socat`` from a local port to the real
service. Pointing a component at the forwarder and stopping it (open connections and all) is a
real loss of the service, seen by that component only; the machine's services keep running for
every other test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import suppress
from urllib.parse import urlsplit, urlunsplit

from tests.conftest import wait_for

SOCAT = "/usr/bin/socat"
DEFAULT_PORTS = {"amqp": 5672, "redis": 6379, "postgresql+psycopg": 5432}


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def moved_to(url: str, port: int) -> tuple[str, int]:
    """``url`` pointed at 127.0.0.1:``port`` instead, and the port it pointed at."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.port or DEFAULT_PORTS[parts.scheme]


class Forwarder:
    """``socat`` from a local port to a real service: the service "comes back" on ``start()``
    and goes away again, open connections and all, on ``stop()``."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [SOCAT, f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr",
             f"TCP:127.0.0.1:{self.target_port}"],
            start_new_session=True)  # its forked children share its process group
        wait_for(lambda: listening(self.port), timeout=30, message=f"socat on {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # the group of the socat we started
        self.process.wait(timeout=30)
        self.process = None
        wait_for(lambda: not listening(self.port), timeout=30, message=f"{self.port} closed")
