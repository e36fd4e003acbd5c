"""CPU time per job, split by process: the bench driver (the client), the measured system's worker
trees, PostgreSQL, Redis, RabbitMQ and the rest of the machine, over one measured interval.

A throughput number hides where the work goes; CPU per job does not, and it is what a deployment
pays for. Read from ``/proc`` (psutil is not a dependency): a process's ``utime + stime`` in
``/proc/<pid>/stat`` covers all its threads, and its ``cutime + cstime`` the children it reaped, so
a Postgres backend or prefork child that exits during the interval is still counted once its
parent has waited for it. ``/proc`` counts in clock ticks (10 ms at USER_HZ 100): each process's
reading is off by less than a tick at either end, which averages out over thousands of jobs. The
driver itself is read with ``getrusage(RUSAGE_SELF)`` (microseconds, all threads, and not the
workers of earlier phases it reaped).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
#: Service process groups: every process with one of these names (``comm``) and its descendants
#: (RabbitMQ's ``erl_child_setup``, ``inet_gethost``, ...; Postgres backends are named
#: ``postgres`` too).
SERVICES: dict[str, tuple[str, ...]] = {
    "postgres": ("postgres",),
    "redis": ("redis-server",),
    "rabbitmq": ("beam.smp", "epmd"),
}
#: Rows of a per-job account, in table order (``other``: the machine's busy time minus the rest).
GROUPS = ("client", "worker", *SERVICES, "other")
#: After the last result: the workers count as done once they used no CPU for QUIET_S (a tick
#: is 10 ms, so 5 polls at 20 ms), or after SETTLE_TIMEOUT_S whatever they do.
QUIET_S = 0.1
SETTLE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Proc:
    """One process's line of ``/proc/<pid>/stat``: its parent, name and CPU ticks so far (own
    threads plus reaped children)."""

    pid: int
    ppid: int
    name: str
    ticks: int


def processes() -> dict[int, Proc]:
    """Every process now visible in ``/proc`` (ones that exit while being read are skipped)."""
    found: dict[int, Proc] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            found[pid] = Proc(pid, int(fields[1]), name,
                              sum(int(v) for v in fields[11:15]))  # utime stime cutime cstime
    return found


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


def snapshot(worker_pids: Iterable[int], client_s: float | None = None) -> Snapshot:
    """Read every group now. ``worker_pids``: the roots of the measured system's worker
    processes (each with its prefork children); ``client_s``: the driver's time, read by the
    caller before (``end``), or here after, the scan of ``/proc`` (~3 ms of CPU), so the
    client's row holds the measured calls only."""
    procs = processes()
    members = {"worker": tree(procs, worker_pids)}
    for group, names in SERVICES.items():
        members[group] = tree(procs, [p.pid for p in procs.values() if p.name in names])
    groups = {group: sum(procs[pid].ticks for pid in pids) * TICK_S
              for group, pids in members.items()}
    client = _client_s() if client_s is None else client_s
    return Snapshot(time.monotonic(), {"client": client, **groups}, machine_busy_s())


def begin(worker_pids: Iterable[int]) -> Snapshot:
    """The start of a measured interval."""
    return snapshot(worker_pids)


def end(begun: Snapshot, worker_pids: Iterable[int], jobs: int) -> dict[str, Any]:
    """The end of a measured interval (call it as the last result arrives): the driver's time
    now, the rest once the workers have settled; µs per job of each group (``per_job``)."""
    pids = list(worker_pids)
    client, wall = _client_s(), time.monotonic()
    waited = settle(pids)
    account = per_job(begun, snapshot(pids, client), jobs)
    return account | {"wall_s": round(wall - begun.wall, 3), "settle_s": round(waited, 3)}


def per_job(start: Snapshot, end: Snapshot, jobs: int) -> dict[str, Any]:
    """µs of CPU per job of each group between two snapshots, their total, and the interval.
    ``other`` (the machine's busy time minus every group: other work on the machine, the
    kernel's own) is floored at 0, as tick rounding can take the groups' sum past the machine's;
    ``total`` is the bench's groups without ``other``."""
    scale = 1e6 / max(jobs, 1)
    used = {group: max(end.groups[group] - start.groups.get(group, 0.0), 0.0)
            for group in end.groups}
    account: dict[str, Any] = {group: round(seconds * scale, 2) for group, seconds in used.items()}
    account["total"] = round(sum(used.values()) * scale, 2)
    account["other"] = None
    if start.machine is not None and end.machine is not None:
        other = max(end.machine - start.machine - sum(used.values()), 0.0)
        account["other"] = round(other * scale, 2)
    account["jobs"] = jobs
    account["wall_s"] = round(end.wall - start.wall, 3)
    return account


def least(accounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The account with the lowest total of several repeats (outside load only adds CPU: cache
    misses, lock spins), with every repeat's total alongside."""
    best = min(accounts, key=lambda account: float(account["total"]))
    return {**best, "runs_total_us": [round(a["total"], 1) for a in accounts]}
