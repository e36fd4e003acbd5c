"""CPU time per job, split by process: the bench driver (the client), the measured system's worker
trees, PostgreSQL, Redis, RabbitMQ and the rest of the machine, over one measured interval.

A throughput number hides where the work goes; CPU per job does not, and it is what a deployment
pays for. Read from ``/proc`` (psutil is not a dependency): a process's ``utime + stime`` in
``/proc/<pid>/stat`` covers all its threads, and its ``cutime + cstime`` the children it reaped (a
prefork child that exits during the interval still counts once its parent has waited for it).
``/proc`` counts in clock ticks (10 ms at USER_HZ 100): each process's reading is off by less than
a tick at either end, which averages out over thousands of jobs. The driver itself is read with
``getrusage(RUSAGE_SELF)`` (microseconds, all threads, and not the workers of earlier phases it
reaped).

Postgres is shared with whatever else runs on the machine, and its backends carry their database
in their process title, so the ``postgres`` row is the run's own: the backends of the run's
database, the server's background processes (WAL writer, checkpointer, ...: they write what the
backends wrote) and the postmaster's own time, not its reaped children (every database's exited
backends). A backend of the run that exits during the interval loses its count: the client and the
workers keep pooled connections, so few do. ``postgres_all`` (every ``postgres`` process with
reaped children, other databases' work included) is kept alongside, outside the total. Redis and
RabbitMQ cannot be split by client: their rows are the whole server.
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
POSTGRES = "postgres"
#: Whole-server groups: every process with one of these names (``comm``) and its descendants
#: (RabbitMQ's ``erl_child_setup``, ``inet_gethost``, ...).
SERVERS: dict[str, tuple[str, ...]] = {
    "redis": ("redis-server",),
    "rabbitmq": ("beam.smp", "epmd"),
}
#: Rows of a per-job account, in table order (``other``: the machine's busy time minus the rest).
GROUPS = ("client", "worker", POSTGRES, *SERVERS, "other")
#: Groups read besides, not part of the total.
ASIDE = ("postgres_all",)
#: A client backend's title ends in its peer: ``host(port) <activity>`` or ``[local] ...``.
_CLIENT_BACKEND = re.compile(r"\(\d+\) |\[local\]")
#: After the last result: the workers count as done once they used no CPU for QUIET_S (a tick
#: is 10 ms, so 5 polls at 20 ms), or after SETTLE_TIMEOUT_S whatever they do.
QUIET_S = 0.1
SETTLE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Proc:
    """One process's line of ``/proc/<pid>/stat``: its parent, name, and CPU ticks so far of its
    own threads and of the children it reaped."""

    pid: int
    ppid: int
    name: str
    own: int
    reaped: int

    @property
    def ticks(self) -> int:
        return self.own + self.reaped


def processes() -> dict[int, Proc]:
    """Every process now visible in ``/proc`` (ones that exit while being read are skipped)."""
    found: dict[int, Proc] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            found[pid] = Proc(pid, int(fields[1]), name,  # utime + stime, cutime + cstime
                              int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return found


def _title(pid: int) -> str:
    with suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    return ""


def postgres_ticks(procs: Mapping[int, Proc], database: str | None) -> int:
    """The run's Postgres ticks: the backends of ``database``, the background processes and the
    postmaster's own (see the module's docstring); every backend's when ``database`` is None."""
    total = 0
    for proc in procs.values():
        if proc.name != POSTGRES:
            continue
        parent = procs.get(proc.ppid)
        if parent is None or parent.name != POSTGRES:
            total += proc.own  # the postmaster: not its reaped backends, of every database
            continue
        title = _title(proc.pid)
        if database is None or not _CLIENT_BACKEND.search(title) or f" {database} " in title:
            total += proc.ticks
    return total


def tree(procs: Mapping[int, Proc], roots: Iterable[int]) -> set[int]:
    """``roots`` (those alive) and all their descendants."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    members: set[int] = set()
    stack = [pid for pid in roots if pid in procs]
    while stack:
        pid = stack.pop()
        if pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, ()))
    return members


def machine_busy_s() -> float | None:
    """CPU-seconds the whole machine has been busy so far (user, nice, system, irq, softirq of
    ``/proc/stat``; not idle, iowait, steal, nor guest, which user already holds)."""
    with suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields[i] for i in (0, 1, 2, 5, 6)) * TICK_S
    return None


def _client_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """CPU-seconds so far of each group (``other`` excluded), of the machine, and the clock."""

    wall: float
    groups: dict[str, float]
    machine: float | None


def _worker_ticks(worker_pids: list[int]) -> int:
    procs = processes()
    return sum(procs[pid].ticks for pid in tree(procs, worker_pids))


def settle(worker_pids: Iterable[int], *, quiet_s: float = QUIET_S,
           timeout_s: float = SETTLE_TIMEOUT_S) -> float:
    """Wait until the worker trees have used no CPU for ``quiet_s`` (at most ``timeout_s``), so
    a job's tail after the result the client saw (acks, task events, state writes) is counted;
    returns the seconds waited. Services are not waited on: other work on the machine uses
    them too."""
    pids = list(worker_pids)
    started = last_change = time.monotonic()
    ticks = _worker_ticks(pids)
    while time.monotonic() - last_change < quiet_s and time.monotonic() - started < timeout_s:
        time.sleep(quiet_s / 5)
        now = _worker_ticks(pids)
        if now != ticks:
            ticks, last_change = now, time.monotonic()
    return time.monotonic() - started


def snapshot(worker_pids: Iterable[int], database: str | None = None,
             client_s: float | None = None) -> Snapshot:
    """Read every group now. ``worker_pids``: the roots of the measured system's worker
    processes (each with its prefork children); ``database``: the run's, whose backends are its
    Postgres share; ``client_s``: the driver's time, read by the caller before (``end``), or here
    after, the scan of ``/proc`` (~3 ms of CPU), so the client's row holds the measured calls
    only."""
    procs = processes()
    members = {"worker": tree(procs, worker_pids),
               "postgres_all": tree(procs, [p.pid for p in procs.values() if p.name == POSTGRES])}
    for group, names in SERVERS.items():
        members[group] = tree(procs, [p.pid for p in procs.values() if p.name in names])
    groups = {group: sum(procs[pid].ticks for pid in pids) * TICK_S
              for group, pids in members.items()}
    groups[POSTGRES] = postgres_ticks(procs, database) * TICK_S
    client = _client_s() if client_s is None else client_s
    return Snapshot(time.monotonic(), {"client": client, **groups}, machine_busy_s())


def begin(worker_pids: Iterable[int], database: str | None) -> Snapshot:
    """The start of a measured interval."""
    return snapshot(worker_pids, database)


def end(begun: Snapshot, worker_pids: Iterable[int], database: str | None,
        jobs: int) -> dict[str, Any]:
    """The end of a measured interval (call it as the last result arrives): the driver's time
    now, the rest once the workers have settled; µs per job of each group (``per_job``)."""
    pids = list(worker_pids)
    client, wall = _client_s(), time.monotonic()
    waited = settle(pids)
    account = per_job(begun, snapshot(pids, database, client), jobs)
    return account | {"wall_s": round(wall - begun.wall, 3), "settle_s": round(waited, 3)}


def per_job(start: Snapshot, end: Snapshot, jobs: int) -> dict[str, Any]:
    """µs of CPU per job of each group between two snapshots, and ``total``: the sum of the
    ``GROUPS`` rows (``ASIDE`` ones are shown, not added). ``other`` (the machine's busy time
    minus every process of every group and of the whole Postgres server: other work on the
    machine, the kernel's own) is floored at 0, as tick rounding can take the groups' sum past
    the machine's."""
    scale = 1e6 / max(jobs, 1)
    used = {group: max(end.groups[group] - start.groups.get(group, 0.0), 0.0)
            for group in end.groups}
    account: dict[str, Any] = {group: round(seconds * scale, 2) for group, seconds in used.items()}
    counted = sum(seconds for group, seconds in used.items() if group not in ASIDE)
    account["total"] = round(counted * scale, 2)
    account["other"] = None
    if start.machine is not None and end.machine is not None:
        ours = used.get(POSTGRES, 0.0)
        every = counted - ours + max(used.get("postgres_all", ours), ours)
        account["other"] = round(max(end.machine - start.machine - every, 0.0) * scale, 2)
    account["jobs"] = jobs
    account["wall_s"] = round(end.wall - start.wall, 3)
    return account


def least(accounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The account with the lowest total of several repeats (outside load only adds CPU: cache
    misses, lock spins), with every repeat's total alongside."""
    best = min(accounts, key=lambda account: float(account["total"]))
    return {**best, "runs_total_us": [round(a["total"], 1) for a in accounts]}
