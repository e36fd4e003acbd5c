"""One bench run's isolation and processes: its own namespace and database (as tests/conftest.py
does), the worker subprocesses it starts, waiting on conditions, and the clean-up at the end."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import make_url

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.processes import warm_stop
from aidist.transport import delete_namespace, queue_name, queue_stats
from bench.config import REPO
from db import setup as db_setup
from db.cache import ResultCache
from models import build_registry

STOP_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 240.0


def isolated_settings() -> Settings:
    """Settings from the environment, with a fresh namespace and database of this run's own."""
    base = Settings()
    tag = uuid.uuid4().hex[:10]
    database_url = make_url(base.database_url).set(database=f"aidist_bench_{tag}")
    return Settings(**{**base.model_dump(),
                       "database_url": database_url.render_as_string(hide_password=False),
                       "namespace": f"bench{tag}", "plugins": []})


def database_name(settings: Settings) -> str | None:
    """The run's database (its backends carry it in their process title)."""
    return make_url(settings.database_url).database


def prepare(settings: Settings) -> None:
    """Create and migrate the run's database."""
    db_setup.upgrade(settings.database_url, settings.connect_timeout_s)


def cleanup(settings: Settings, extra_queues: Sequence[str] = ()) -> list[str]:
    """Delete the run's Redis keys, queues, exchanges and database; returns what failed."""
    problems: list[str] = []
    try:
        cache = ResultCache.connect(settings.redis_url, settings.namespace)
        cache.delete_namespace()
        cache.close()
    except Exception as exc:
        problems.append(f"redis clean-up: {exc}")
    registry = build_registry(settings.plugins)
    queues = [queue_name(settings.namespace, s.kind, s.name) for s in registry.specs()]
    try:
        delete_namespace(settings.broker_url, settings.namespace, [*queues, *extra_queues],
                         extra_queues)
    except ServiceUnavailable as exc:
        problems.append(f"rabbitmq clean-up: {exc!r}")
    try:
        db_setup.drop_database(settings.database_url)
    except Exception as exc:
        problems.append(f"postgres clean-up: {exc}")
    return problems


def aidist_env(settings: Settings) -> dict[str, str]:
    """Environment that points an ``aidist`` process at these settings."""
    return {**os.environ, **settings.as_env(), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def venv_script(name: str) -> str:
    """A console script of the running interpreter's environment (``aidist``, ``celery``)."""
    return str(Path(sys.executable).parent / name)


@dataclass
class Worker:
    """A worker subprocess and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}; log {self.log_path}:\n"
                               f"{self.log_tail()}")

    def stop(self) -> int:
        """Warm shutdown (SIGTERM); SIGKILL if it does not stop within ``STOP_TIMEOUT_S``."""
        return warm_stop(self.process, STOP_TIMEOUT_S)


@dataclass
class Workers:
    """The worker processes of one phase; stopped together (SIGTERM) when the phase ends."""

    log_dir: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Worker:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(name, process, log_path)
        self.started.append(worker)
        return worker

    def check_alive(self) -> None:
        for worker in self.started:
            worker.check_alive()

    def stop_all(self) -> dict[str, int]:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        codes = {worker.name: worker.stop() for worker in self.started}
        self.started.clear()
        return codes


@contextmanager
def phase(log_dir: Path) -> Iterator[Workers]:
    """Workers started inside the block are stopped when it ends, also on failure."""
    workers = Workers(log_dir)
    try:
        yield workers
    finally:
        workers.stop_all()


def wait_for(condition: Callable[[], object], *, timeout: float, what: str,
             workers: Workers | None = None, interval: float = 0.1) -> None:
    """Poll ``condition`` until truthy; raise if ``timeout`` passes or a worker dies meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if workers is not None:
            workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def consuming(broker_url: str, queues: Sequence[str]) -> Callable[[], bool]:
    """Condition: every queue has at least one consumer."""
    return lambda: all(s.consumers > 0 for s in queue_stats(broker_url, queues))


def ready_files(directory: Path, count: int) -> Callable[[], bool]:
    """Condition: ``count`` worker processes wrote their ready file (model loaded)."""
    return lambda: sum(1 for _ in directory.glob("*.ready")) >= count


def _proc_stat() -> tuple[int, int]:
    """(all jiffies, idle jiffies) of the machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over ``seconds``, before anything of the bench runs."""
    with suppress(OSError, ValueError, IndexError):
        total0, idle0 = _proc_stat()
        time.sleep(seconds)
        total1, idle1 = _proc_stat()
        return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return None


SERVICE_PROCESSES = ("beam.smp", "redis-server", "postgres")


def services_cpu_ticks() -> int:
    """CPU ticks RabbitMQ, Redis and PostgreSQL processes have used so far (with the reaped
    children of each, which covers Postgres backends that came and went)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name in SERVICE_PROCESSES:
                fields = text[text.rindex(")") + 2 :].split()
                total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total


class CpuAccount:
    """CPU the whole machine used during the run, split into the bench's own processes (this one
    and every worker it started and reaped), the services (RabbitMQ, Redis, Postgres: mostly
    serving the bench) and the rest: other work on the machine, which makes absolute rates
    unreliable."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.wall0 = time.monotonic()
        self.own0 = self._own()
        self.stat0 = self._stat()
        self.services0 = services_cpu_ticks()

    @staticmethod
    def _own() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    @staticmethod
    def _stat() -> tuple[int, int] | None:
        with suppress(OSError, ValueError, IndexError):
            return _proc_stat()
        return None

    def summary(self) -> dict[str, float | None]:
        """Core-seconds: machine busy, the bench's own, the rest; and the rest as a share of the
        machine's capacity over the run."""
        wall = time.monotonic() - self.wall0
        own = self._own() - self.own0
        stat = self._stat()
        if stat is None or self.stat0 is None:
            return {"wall_s": wall, "own_cpu_s": own, "machine_cpu_s": None, "other_cpu_s": None,
                    "other_share": None}
        busy = ((stat[0] - stat[1]) - (self.stat0[0] - self.stat0[1])) / self.ticks
        services = (services_cpu_ticks() - self.services0) / self.ticks
        other = max(busy - own - services, 0.0)
        return {"wall_s": wall, "own_cpu_s": own, "services_cpu_s": services,
                "machine_cpu_s": busy, "other_cpu_s": other,
                "other_share": other / max(wall * (os.cpu_count() or 1), 1e-9)}
