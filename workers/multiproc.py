"""prometheus-client's multiprocess mode for one worker: its directory, and the collector that
reads it.

Each process writes its metric values to files named by its pid (``counter_<pid>.db``,
``gauge_livemax_<pid>.db``, ...) in ``PROMETHEUS_MULTIPROC_DIR``; the main process's scrape adds
the files up. Every worker gets a fresh directory of its own (two workers sharing one would add
up each other's work), set before Celery forks the prefork children so they inherit it, and
removed when the worker exits.

What a dead process leaves: its counter and histogram files stay, as they should (the jobs it
counted happened; dropping them would make the totals go backwards). Its live-mode gauge files
must go: a child that exits cleanly removes its own (``mark_process_dead`` from Celery's
``worker_process_shutdown``, which runs in the child), and each scrape removes those of any pid
that is no longer this worker or one of its children (a SIGKILLed child runs nothing). A new
child that reuses a dead one's pid removes them too before it records anything.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from celery.signals import worker_process_shutdown
from prometheus_client import values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from aidist.processes import children_of

ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDir:
    """A worker's multiprocess directory; ``create()`` turns multiprocess mode on in this
    process (and so in the children it forks later), ``close()`` turns it off again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owner = os.getpid()

    @classmethod
    def create(cls) -> MetricsDir:
        """A new, empty directory under the temp dir (``TMPDIR``), made current.

        prometheus-client chooses how values are stored (``values.ValueClass``) once, at its
        import, from this environment variable, and the ``aidist`` command imports it long
        before a worker knows it will serve metrics. So the choice is made again here, after
        setting the variable and before any metric of the worker exists, as prometheus-client's
        own multiprocess tests do; children forked later inherit it."""
        directory = cls(Path(tempfile.mkdtemp(prefix=f"aidist-metrics-{os.getpid()}-")))
        os.environ[ENV] = str(directory.path)
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        worker_process_shutdown.connect(directory._child_exited, weak=False)
        return directory

    def _child_exited(self, pid: int | None = None, **_: Any) -> None:
        self.forget(pid or os.getpid())

    def forget(self, pid: int) -> None:
        """Drop the live-mode gauges of a process that has gone (or whose pid is new)."""
        mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def children(self) -> set[int]:
        """This worker's child processes (the prefork pool's)."""
        return children_of(self.owner)

    def reap(self) -> None:
        """Forget every process with live gauges that is not this worker or a child of it."""
        alive = {self.owner} | self.children()
        for name in glob.glob(str(self.path / "gauge_live*_*.db")):
            pid = Path(name).stem.rsplit("_", 1)[-1]
            if pid.isdigit() and int(pid) not in alive:
                self.forget(int(pid))

    def loaded(self, pid: int, gauge: str) -> set[str]:
        """The ``target`` labels a live-max ``gauge`` has a value for in one process's file."""
        found = glob.glob(str(self.path / f"gauge_livemax_{pid}.db"))
        merged: Iterable[Metric] = MultiProcessCollector.merge(found)  # type: ignore[no-untyped-call]
        return {sample.labels["target"] for metric in merged if metric.name == gauge
                for sample in metric.samples if "target" in sample.labels}

    def collect(self) -> Iterable[Metric]:
        """Every process's values added up, the dead ones' live gauges forgotten first."""
        self.reap()
        collector = MultiProcessCollector(None, str(self.path))  # type: ignore[no-untyped-call]
        merged: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
        return merged

    def close(self) -> None:
        """Remove the directory and leave multiprocess mode (in the process that made it)."""
        if os.getpid() != self.owner:
            return
        worker_process_shutdown.disconnect(self._child_exited)
        shutil.rmtree(self.path, ignore_errors=True)
        if os.environ.get(ENV) == str(self.path):
            del os.environ[ENV]
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
