"""Stopping a worker process the way an operator does: SIGTERM for a warm shutdown, SIGKILL only
if it has not exited in time; finding a prefork worker's children. Used by the autoscaler, the
demo, the tests and the benchmarks."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any


def warm_stop(process: subprocess.Popen[Any], timeout: float = 60.0) -> int:
    """SIGTERM (once), wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return wait_or_kill(process, timeout)


def wait_or_kill(process: subprocess.Popen[Any], timeout: float = 60.0) -> int:
    """Wait for a process already told to stop; SIGKILL it after ``timeout`` seconds."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.returncode


def children_of(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (a prefork worker's children), read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found
