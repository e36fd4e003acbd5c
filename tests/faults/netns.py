"""Worker "hosts" for the fault suite: network namespaces joined to this machine by veth pairs.

RabbitMQ, Redis and PostgreSQL listen on 127.0.0.1 only, so a worker in a namespace cannot reach
them unless something forwards: each host gets socat forwarders on the host side of its veth
(10.77.N.1) to the services, and its workers are given URLs that point there. Inside, 127.0.0.1 is
the namespace's own loopback, with nothing listening: a worker that needed anything from the
machine it shares with the services (a localhost URL, a default) would fail to start. Each host
also gets a hostname of its own (a UTS namespace), which aidist's runtime names start with.

Everything made here is removed by ``Network.close``, which always runs to the end: workers are
stopped (SIGTERM, then SIGKILL), any process still in a namespace is killed, forwarders are killed
by process group (socat forks one child per connection), veths and namespaces are deleted, and
what is left of any of them is reported as an error. Namespaces of earlier runs whose pytest died
before cleaning up are removed when a network is created.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aidist.config import Settings
from tests.conftest import REPO, aidist_command, settings_env, wait_for
from tests.plugins import EXEC_LOG_ENV

PREFIX = "aidist-h"  # namespaces: aidist-h<pytest pid>-<index>
SUBNET = "10.77"  # host N: 10.77.N.1 on this machine's side, 10.77.N.2 inside
SOCAT = "/usr/bin/socat"
STOP_S = 60.0
COMMAND_TIMEOUT_S = 30
DEFAULT_PORTS = {"amqp": 5672, "redis": 6379, "postgresql": 5432}
# A host that vanishes in the middle of a transaction (between its UPDATE and its COMMIT) leaves
# the backend idle in transaction, holding the rows' locks, until PostgreSQL notices the dead
# connection: with nothing from the host ever arriving again, that is TCP keepalive (hours by
# default) or this timeout. Another worker's claim of those rows waits on the locks meanwhile.
# No transaction of aidist's stays idle for long (each store call is one short transaction).
IDLE_IN_TRANSACTION_MS = 10_000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, timeout=COMMAND_TIMEOUT_S,
                          capture_output=True, text=True)


def namespaces() -> list[str]:
    """Names of this machine's network namespaces."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def links() -> list[str]:
    """Names of this machine's network interfaces (root namespace)."""
    names = []
    for line in _ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        names.append(name)
    return names


def pids_in(netns: str) -> list[int]:
    """Processes running in a network namespace (empty if it is gone)."""
    done = _ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete namespaces an earlier pytest (now dead) made and could not remove (its veths go
    with them: deleting a namespace deletes the veth end inside, and with it the pair)."""
    for name in namespaces():
        found = re.fullmatch(rf"{PREFIX}(\d+)-\d+", name)
        if found and not _alive(int(found.group(1))):
            _kill_all(pids_in(name))
            _ip("netns", "delete", name, check=False)


def with_host(url: str, host: str, query: str = "") -> str:
    """``url`` with its host replaced by ``host`` (port, credentials and path kept), and
    ``query`` appended to its query string."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{auth}@{host}{port}" if auth else f"{host}{port}"
    joined = "&".join(q for q in (parts.query, query) if q)
    return urlunsplit(parts._replace(netloc=netloc, query=joined))


def service_address(url: str) -> tuple[str, int]:
    """(host, port) a service URL points at."""
    parts = urlsplit(url)
    scheme = parts.scheme.partition("+")[0]
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[scheme]


def _reachable(address: tuple[str, int]) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(address) == 0


@dataclass
class HostWorker:
    """An ``aidist worker`` running on a host, and its log."""

    host: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        # ip netns exec, unshare and sh all exec: the worker keeps the pid Popen started
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Host:
    """A network namespace with a hostname of its own, a veth pair to this machine, and
    forwarders from the host side of the veth to the services."""

    name: str  # its hostname, e.g. "host-a"
    netns: str
    veth: str  # this machine's end of the pair
    outer_ip: str  # this machine's address on the link: where the forwarders listen
    inner_ip: str
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[HostWorker] = field(default_factory=list)

    def settings(self, base: Settings) -> Settings:
        """``base`` with every service URL pointing across the link (see
        ``IDLE_IN_TRANSACTION_MS`` for the database URL's option)."""
        options = f"options=-c%20idle_in_transaction_session_timeout%3D{IDLE_IN_TRANSACTION_MS}"
        return base.model_copy(update={
            "broker_url": with_host(base.broker_url, self.outer_ip),
            "redis_url": with_host(base.redis_url, self.outer_ip),
            "database_url": with_host(base.database_url, self.outer_ip, options),
        })

    def start_worker(self, settings: Settings, exec_dir: Path, log_dir: Path, *args: str,
                     env: dict[str, str] | None = None) -> HostWorker:
        """Start ``aidist worker ARGS`` on this host, as a user there would: its own node name
        and hostname, the services reached across the link."""
        log_path = log_dir / f"{self.name}-worker-{len(self.workers)}.log"
        environment = {**settings_env(self.settings(settings)), EXEC_LOG_ENV: str(exec_dir),
                       **(env or {})}
        command = ["ip", "netns", "exec", self.netns, "unshare", "--uts",
                   "sh", "-c", 'hostname "$0" && exec "$@"', self.name,
                   aidist_command(), "worker", *args, "--hostname", f"gpu@{self.name}"]
        with log_path.open("wb") as handle:
            process = subprocess.Popen(command, env=environment, cwd=REPO, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        worker = HostWorker(self.name, process, log_path)
        self.workers.append(worker)
        return worker

    def cut(self) -> None:
        """Take this machine's end of the link down: from now on nothing the host sends arrives,
        not even the FIN of a connection its kernel closes."""
        _ip("link", "set", self.veth, "down")


def _stop_group(process: subprocess.Popen[bytes], timeout: float = STOP_S) -> None:
    """SIGTERM a process group we started, wait, then SIGKILL whatever is left of it, and wait
    until it is gone (socat's children, orphaned by then, are reaped by init, not by us)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: the pause between looks
    while _group_alive(process.pid) and time.monotonic() < deadline:
        pause.wait(0.02)


@dataclass
class Network:
    """The hosts of one scenario; ``close`` removes every one of them."""

    settings: Settings
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        remove_stale()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _free_subnet(self) -> int:
        used = set(re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.",
                              _ip("-o", "-4", "addr", "show").stdout))
        start = os.getpid() % 200 + 1
        for offset in range(254):
            number = (start + offset) % 254 + 1
            if str(number) not in used:
                return number
        raise RuntimeError(f"no free {SUBNET}.N.0/24 subnet for a test host")

    def add_host(self, name: str) -> Host:
        """Create a host: namespace, veth pair, addresses, loopback, forwarders to each service
        (waited for until they accept)."""
        index = len(self.hosts)
        subnet = self._free_subnet()
        host = Host(name=name, netns=f"{PREFIX}{os.getpid()}-{index}",
                    veth=f"ah{os.getpid() % 100_000}x{index}",
                    outer_ip=f"{SUBNET}.{subnet}.1", inner_ip=f"{SUBNET}.{subnet}.2")
        self.hosts.append(host)  # from here on, close() removes whatever exists of it
        inner = f"{host.veth}i"
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", host.netns)
        _ip("addr", "add", f"{host.outer_ip}/24", "dev", host.veth)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.inner_ip}/24", "dev", inner)
        _ip("-n", host.netns, "link", "set", inner, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        for url in (self.settings.broker_url, self.settings.redis_url,
                    self.settings.database_url):
            target, port = service_address(url)
            host.forwarders.append(subprocess.Popen(
                [SOCAT, f"TCP-LISTEN:{port},bind={host.outer_ip},fork,reuseaddr",
                 f"TCP:{target}:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            address = (host.outer_ip, port)
            wait_for(partial(_reachable, address), timeout=30, interval=0.02,
                     message=f"forwarder {host.outer_ip}:{port} of {name}")
        return host

    def close(self) -> None:
        """Remove every host, whatever state it is in (each step runs even if one before it
        failed); raise if anything is left behind."""
        errors: list[str] = []
        for host in self.hosts:
            for worker in host.workers:
                _attempt(errors, host, _stop_group, worker.process)
            _attempt(errors, host, _kill_namespace, host)
            for forwarder in host.forwarders:
                _attempt(errors, host, _stop_group, forwarder)
            _attempt(errors, host, _delete, host)
        left = self.leftovers()
        if errors or left:
            raise RuntimeError(f"test hosts not cleaned up: errors {errors}, left {left}")

    def leftovers(self) -> list[str]:
        """What of this network's hosts still exists (empty once closed)."""
        current_links, current_namespaces = set(links()), set(namespaces())
        left: list[str] = []
        for host in self.hosts:
            if host.veth in current_links:
                left.append(f"veth {host.veth}")
            if host.netns in current_namespaces:
                left.append(f"namespace {host.netns}")
            left += [f"forwarder {p.pid}" for p in host.forwarders if _group_alive(p.pid)]
            left += [f"worker {w.pid}" for w in host.workers if _group_alive(w.pid)]
        return left


def _attempt(errors: list[str], host: Host, step: Callable[[Any], None], arg: Any) -> None:
    """Run one cleanup step; an error is noted, and the steps after it still run."""
    try:
        step(arg)
    except Exception as exc:
        errors.append(f"{host.name}: {step.__name__}: {exc!r}")


def _kill_namespace(host: Host) -> None:
    """SIGKILL whatever still runs in a host's namespace (only our workers ran there)."""
    _kill_all(pids_in(host.netns))


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete(host: Host) -> None:
    if host.veth in links():
        _ip("link", "delete", host.veth)
    if host.netns in namespaces():
        _ip("netns", "delete", host.netns)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
