"""A self-pipe that lets the gpu pool's runner threads wake the consumer's event loop.

A runner thread that ends a flush must hand it back to the consumer's thread: only that thread
may ack on the channel, and only it hands held messages to the runner that just freed up. The
consumer's loop sleeps in ``epoll`` between messages, so something must wake it. It used to be a
timer that looked every 2 ms while a batch was out: under packed load, 500 wake-ups a second
took about half of the consumer thread's GIL time (the GIL the model threads need), and a
finished flush waited up to 2 ms to be acked and for its runner to be given the next one. A byte
written to a pipe the loop watches wakes it once per finished flush, at once.
"""

from __future__ import annotations

import os
from contextlib import suppress


class Wakeup:
    """One pipe, non-blocking at both ends. ``set`` from any thread; the loop calls ``clear``
    before it looks for what woke it, so a ``set`` that comes while it looks wakes it again."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The end the loop watches for reading."""
        return self._read_fd

    def set(self) -> None:
        """Wake the loop. A full pipe already holds a wake-up the loop has not read: enough."""
        with suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def clear(self) -> None:
        """Read every pending wake-up."""
        with suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with suppress(OSError):
                os.close(fd)
