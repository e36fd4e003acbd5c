"""The fault suite's instruments: worker processes under a supervisor, service restarts done the
way an operator does them, a producer that keeps submitting, and each scenario's world (the tally
line and the execution log are in tests.faults.tally).

Counting is independent of aidist's own records where it matters: executions come from the
``logged`` model's execution log (tests/plugins.py), and "lost" means a row of the scenario's own
database that is not terminal within the bound.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.jobs import JobStatus
from aidist.processes import children_of
from aidist.transport import queue_name, queue_stats
from db import JobStore
from producers import Client, Job
from tests.conftest import REPO, aidist_command, settings_env, wait_for
from tests.faults.tally import IN_FLIGHT, ExecLog, Tally
from tests.plugins import EXEC_LOG_ENV, GATE_FILE

__all__ = ["IN_FLIGHT", "ExecLog", "Fleet", "Member", "Producer", "Scenario", "Tally",
           "ensure_services", "flush_redis", "queue_messages", "restart_postgres",
           "restart_rabbitmq", "restart_redis", "settle", "unique_inputs", "when"]

SERVICE_TIMEOUT_S = 120
# -- workers under a supervisor --------------------------------------------------------------------

@dataclass
class Member:
    """One ``aidist worker`` process and how to start another like it."""

    args: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    stopping: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Fleet:
    """Worker processes, restarted by a supervisor thread when one exits without being told to
    (as systemd, Kubernetes or compose ``restart:`` would)."""

    settings: Settings
    log_dir: Path
    exec_dir: Path
    members: list[Member] = field(default_factory=list)
    crashed: set[int] = field(default_factory=set)  # pids that died without a warm shutdown
    restarts: int = 0
    on_death: Callable[[int], None] | None = None  # called with the pid of each crashed member
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _spawn(self, args: list[str], extra_env: dict[str, str] | None = None) -> Member:
        log_path = self.log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = {**settings_env(self.settings), EXEC_LOG_ENV: str(self.exec_dir),
               **(extra_env or {})}
        with log_path.open("wb") as handle:
            process = subprocess.Popen([aidist_command(), "worker", *args], env=env, cwd=REPO,
                                       stdout=handle, stderr=subprocess.STDOUT)
        return Member(args, process, log_path, extra_env=extra_env or {})

    def start(self, *args: str, env: dict[str, str] | None = None) -> Member:
        member = self._spawn(list(args), env)
        with self._lock:
            self.members.append(member)
        return member

    def live(self) -> list[Member]:
        with self._lock:
            return [m for m in self.members if m.process.poll() is None and not m.stopping]

    def kill(self, member: Member) -> int:
        """SIGKILL a worker process (the supervisor starts another)."""
        pid = member.process.pid
        self.crashed.add(pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_child(self, member: Member) -> int | None:
        """SIGKILL one process of a prefork pool (its parent starts another)."""
        children = sorted(children_of(member.process.pid))
        if not children:
            return None
        self.crashed.add(children[0])
        os.kill(children[0], signal.SIGKILL)
        return children[0]

    def terminate(self, member: Member, timeout: float = 60.0,
                  meanwhile: Callable[[], None] | None = None) -> int:
        """Warm shutdown (SIGTERM), waited for; the caller starts a replacement if it wants.
        ``meanwhile`` runs between the signal and the wait (e.g. letting a held batch end)."""
        member.stopping = True
        member.process.send_signal(signal.SIGTERM)
        if meanwhile is not None:
            meanwhile()
        try:
            return member.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tail = member.log_path.read_text(errors="replace")[-4000:]
            raise AssertionError(f"worker {member.process.pid} still runs {timeout:.0f} s after "
                                 f"SIGTERM; its log ends:\n{tail}") from None

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            died = []
            with self._lock:
                for index, member in enumerate(self.members):
                    code = member.process.poll()
                    if code is None or member.stopping:
                        continue
                    if code != 0:  # killed, or ended by the watchdog
                        self.crashed.add(member.process.pid)
                        died.append(member.process.pid)
                    self.members[index] = self._spawn(member.args, member.extra_env)
                    self.restarts += 1
            for pid in died:
                if self.on_death is not None:
                    self.on_death(pid)

    def logs(self) -> str:
        return "\n".join(m.log_path.read_text(errors="replace")[-2000:] for m in self.members)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join()
        for member in self.members:
            member.stopping = True
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            try:
                member.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()


# -- services, restarted as an operator does -------------------------------------------------------

def _run(*command: str) -> None:
    subprocess.run(command, check=True, timeout=SERVICE_TIMEOUT_S, capture_output=True)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[0]


def restart_rabbitmq() -> None:
    _run("rabbitmqctl", "stop_app")
    _run("rabbitmqctl", "start_app")
    _run("rabbitmqctl", "await_startup")


def restart_postgres() -> None:
    _run("pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", "restart",
         "-m", "fast")


def restart_redis() -> None:
    """Redis here keeps nothing on disk: a restart loses every key."""
    subprocess.run(["redis-cli", "shutdown", "nosave"], timeout=30, capture_output=True,
                   check=False)
    wait_for(lambda: not port_open(6379), timeout=30, message="Redis to stop")
    start_redis()


def start_redis() -> None:
    _run("redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ci.log")


def flush_redis() -> None:
    _run("redis-cli", "flushall")


def ensure_services() -> None:
    """Bring every service back up, whatever a failed test left behind."""
    if not port_open(5672):
        subprocess.run(["rabbitmqctl", "start_app"], timeout=SERVICE_TIMEOUT_S,
                       capture_output=True, check=False)
    subprocess.run(["bash", str(REPO / "scripts" / "services.sh")], timeout=300,
                   capture_output=True, check=False)
    for port, name in ((5432, "PostgreSQL"), (6379, "Redis"), (5672, "RabbitMQ")):
        wait_for(lambda port=port: port_open(port), timeout=120, message=f"{name} to be up")


# -- load ------------------------------------------------------------------------------------------

class Producer(threading.Thread):
    """Submits ``inputs`` in chunks, as fast as it can, the way an application would: a submit
    refused because a service is down (nothing was written) is tried again after a pause."""

    def __init__(self, client: Client, target: str, inputs: Sequence[str], chunk: int = 50,
                 pause: float = 0.0, *, then: Sequence[str] = ()) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.target = target
        self.steps = [target, *then]  # more than one: each input is a pipeline job
        self.inputs = list(inputs)
        self.chunk = chunk
        self.pause = pause
        self.jobs: list[Job] = []
        self.refused = 0
        self.error: BaseException | None = None
        self._wait = threading.Event()  # never set: pauses between tries

    def run(self) -> None:
        try:
            for start in range(0, len(self.inputs), self.chunk):
                part = self.inputs[start : start + self.chunk]
                while True:
                    try:
                        self.jobs.extend(self.client.submit_many(self.target, part)
                                         if len(self.steps) == 1
                                         else self.client.pipeline_many(self.steps, part))
                        break
                    except ServiceUnavailable:
                        self.refused += 1
                        self._wait.wait(0.2)
                if self.pause:
                    self._wait.wait(self.pause)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def finish(self, timeout: float = 300.0) -> list[Job]:
        self.join(timeout)
        assert not self.is_alive(), "producer did not finish"
        if self.error is not None:
            raise self.error
        return self.jobs


def unique_inputs(prefix: str, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}-{tag}-{i}" for i in range(count)]


def settle(store: JobStore, bound_s: float) -> dict[JobStatus, int]:
    """Wait until every row of the scenario's database is terminal, or the bound passes;
    returns the counts by status either way."""
    deadline = time.monotonic() + bound_s
    while True:
        counts = store.count_by_status()
        if counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING] == 0:
            return counts
        if time.monotonic() > deadline:
            return counts
        threading.Event().wait(0.2)


def when(condition: Callable[[], Any], timeout: float, message: str) -> None:
    """Wait for a condition of the run (e.g. N executions logged) before the next fault."""
    wait_for(condition, timeout=timeout, interval=0.02, message=message)


# -- one scenario's world --------------------------------------------------------------------------

@dataclass
class Scenario:
    """A database, a namespace, an execution log and a fleet of workers of its own."""

    settings: Settings
    fleet: Fleet
    client: Client
    store: JobStore
    log: ExecLog
    started: float = field(default_factory=time.monotonic)
    in_flight_at_kills: int = 0

    def __post_init__(self) -> None:
        self.fleet.on_death = self._count_in_flight  # a killed worker, or one the watchdog ended

    def kill_child(self, member: Member) -> int | None:
        """SIGKILL one process of a prefork pool, counting what it had in flight."""
        pid = self.fleet.kill_child(member)
        if pid is not None:
            self._count_in_flight(pid)
        return pid

    def _count_in_flight(self, pid: int) -> None:
        """Jobs a dead process had claimed and not committed: its rows still say running on it
        (a runtime's name is node:pid:token), and none is taken over while its alive mark lasts
        (seconds), so a look right after its death sees them all. Each may run once more: the
        re-runs no system avoids."""
        wait_for(lambda: not process_alive(pid), timeout=30, interval=0.01,
                 message=f"process {pid} to die")
        running = self.store.list_jobs(limit=1_000_000, status=JobStatus.RUNNING)
        self.in_flight_at_kills += sum(
            1 for record in running
            if record.worker is not None and record.worker.split(":")[-2] == str(pid))

    def gpu_worker(self, target: str = "logged", env: dict[str, str] | None = None) -> Member:
        return self.fleet.start("--pool", "gpu", "--models", target, env=env)

    def gpu_workers(self, count: int, target: str = "logged",
                    env: dict[str, str] | None = None) -> list[Member]:
        """Start ``count`` gpu workers and wait until they all consume."""
        started = [self.gpu_worker(target, env) for _ in range(count)]
        self.consumers(self.queue(target), count)
        return started

    def cpu_worker(self, target: str = "logged-cpu", concurrency: int = 2) -> Member:
        return self.fleet.start("--pool", "cpu", "--models", target,
                                "--concurrency", str(concurrency))

    def consumers(self, queue: str, count: int) -> None:
        """Wait until ``count`` workers consume ``queue``."""
        def ready() -> bool:
            return queue_stats(self.settings.broker_url, [queue])[0].consumers >= count

        wait_for(ready, timeout=180, interval=0.2, message=f"{count} consumers on {queue}")

    def queue(self, target: str) -> str:
        spec = self.client.registry.get(target)
        return queue_name(self.settings.namespace, spec.kind, target)

    def tally(self, name: str, bound_s: float, producers: Sequence[Producer] = ()) -> Tally:
        counts = settle(self.store, bound_s)
        twice, rerun = self.log.duplicates(self.fleet.crashed)
        return Tally(
            scenario=name,
            submitted=sum(counts.values()),
            succeeded=counts[JobStatus.SUCCEEDED],
            failed=counts[JobStatus.FAILED],
            cancelled=counts[JobStatus.CANCELLED],
            expired=counts[JobStatus.EXPIRED],
            lost=counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING],
            executed_twice=twice,
            rerun_after_crash=rerun,
            seconds=time.monotonic() - self.started,
            refused_submits=sum(p.refused for p in producers),
            worker_restarts=self.fleet.restarts,
            reruns=self.store.reruns(),
            extra_executions=self.log.extra(),
            in_flight_at_kills=self.in_flight_at_kills,
        )

    def open_gate(self) -> None:
        """Let batches of "gate" inputs finish (see tests.plugins.load_logged)."""
        (self.log.directory / GATE_FILE).touch()

    def check_results(self, jobs: Sequence[Job], inputs: Sequence[str]) -> None:
        """Every job's result is its own input's output, read back through the client."""
        by_id = dict(zip([job.id for job in jobs], inputs, strict=True))
        results = self.client.results_of(list(jobs), timeout=120)
        assert results == [f"done:{by_id[job.id]}" for job in jobs]


def queue_messages(queue: str) -> int:
    """Messages in ``queue``, ready and unacknowledged together (rabbitmqctl, as root)."""
    done = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name",
                           "messages"], timeout=60, capture_output=True, check=True, text=True)
    for line in done.stdout.splitlines():
        name, _, count = line.strip().partition("\t")
        if name == queue:
            return int(count)
    return 0
