"""Stopping a worker process the way an operator does: SIGTERM for a warm shutdown, SIGKILL only
if it has not exited in time. Used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import signal
import subprocess
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
