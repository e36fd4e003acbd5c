"""Publishing single submissions from a thread of their own, packed across calls.

``client.infer()`` returns once its row is committed: the row is the commit point (the sweeper
publishes a row whose message never went out), so the confirmed publish need not happen on the
caller's thread. This thread takes everything recorded while its last publish was in flight (and,
when something was, what comes a little later: see ``LINGER_S``) and sends it packed, per queue
and priority, in as few messages as ``pack_size`` and ``max_message_bytes`` allow. With several
threads submitting one job each, a message then carries the jobs of several calls instead of the
two or three of one group commit, and every message saved is a publish, a confirm, a delivery,
an ack and three task events fewer. Each call also returns sooner: after one round trip to Redis
and one to Postgres, not three.

A broker that is down at submit time still fails the call before anything is written (the
client checks its connection first). One that fails later leaves the jobs recorded and unsent:
published after ``publish_retry_s`` of retries, or by a worker's sweeper once the broker is
back. A message the broker refuses fails its jobs (recorded, and learned by their waiters).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from aidist.errors import ServiceUnavailable
from producers.submission import Outgoing, by_destination

log = logging.getLogger("aidist.client")


#: Under load (jobs were recorded while the previous publish was out), the next publish waits
#: ``LINGER_S`` after the previous one ended for company, unless ``LINGER_UP_TO`` jobs are
#: already waiting. Where a caller does not wait for its jobs (it submitted again while a job of
#: its own still waited here: a stream, as ``map`` is but one call at a time; a caller is a
#: thread, or an ``AsyncClient``'s task), the wait goes on while jobs keep coming, until none
#: has come for ``LINGER_S``, at most ``LINGER_MAX_S`` after the publish: the message fills up.
#: Callers that each wait for their job (a closed loop: a web handler, ``infer().result()`` in a
#: loop) never submit again while it waits here, so for them a linger lasts ``LINGER_S`` at
#: most, however many they are. Measured on 2 cores with 4 threads calling ``infer()``: a 2 ms
#: linger made 0.43 messages per job; 5 ms (with the group commit's gathering) 0.18-0.27 and
#: RabbitMQ's CPU per job 45-67% lower; going on while a stream keeps coming, up to 25 ms: see
#: the README (Performance). A sender that is not under load publishes at once: a lone call,
#: or one thread calling one job at a time, waits for nobody.
LINGER_S = 0.005
LINGER_MAX_S = 0.025
LINGER_UP_TO = 64
Publish = Callable[[str, list[dict[str, Any]], list[int], int], None]


class BackgroundSender:
    """The client's one publisher of single submissions (a daemon thread, started on first use).
    ``publish(queue, entries, sizes, priority)`` sends packed and confirmed, retrying a broker
    that restarts; ``sent(ids)`` hears what went out, ``failed(ids, error)`` what was refused."""

    def __init__(self, publish: Publish, sent: Callable[[list[str]], None],
                 failed: Callable[[list[str], str], None], *, inline: bool = False) -> None:
        self.inline = inline  # publish on the caller's thread (``aidist.testing``'s clients)
        self._publish = publish
        self._sent = sent
        self._failed = failed
        self._pending: list[Outgoing] = []
        self._busy = False  # a publish is under way (what is pending waits for the next)
        self._last_in = 0.0  # monotonic: when ``send`` last queued jobs
        self._waiting_submitters: set[int] = set()  # who submitted what is pending
        self._stream = False  # one of them submitted again while its job was pending
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def send(self, items: Sequence[Outgoing]) -> None:
        """Queue recorded jobs for publishing, and return at once (``inline``: publish them
        now)."""
        if not items:
            return
        if self.inline:
            self._send(list(items))
            return
        with self._cond:
            self._pending.extend(items)
            self._last_in = time.monotonic()
            who = {item.submitter for item in items if item.submitter}
            if not self._stream and not who.isdisjoint(self._waiting_submitters):
                self._stream = True
            self._waiting_submitters |= who
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="aidist-sender",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_sent(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far has been published (or given up on)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Publish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        lingering_from = 0.0  # monotonic: the end of a publish that jobs came in during; 0: none
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return  # closed, nothing left
                while (lingering_from and not self._closed
                       and len(self._pending) < LINGER_UP_TO):
                    until = lingering_from + LINGER_S
                    if self._stream:
                        until = min(lingering_from + LINGER_MAX_S,
                                    max(until, self._last_in + LINGER_S))
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending = self._pending, []
                self._waiting_submitters = set()
                self._stream = False
                self._busy = True
            try:
                self._send(batch)
            finally:
                ended = time.monotonic()
                with self._cond:
                    self._busy = False
                    lingering_from = ended if self._pending else 0.0
                    self._cond.notify_all()

    def _send(self, batch: list[Outgoing]) -> None:
        for (queue, priority), items in by_destination(batch).items():
            ids = [item.entry["id"] for item in items]
            try:
                self._publish(queue, [item.entry for item in items],
                              [item.size for item in items], priority)
            except ServiceUnavailable as exc:
                # Recorded, not sent: a worker's sweeper publishes them once the broker is back.
                log.warning("%d jobs recorded but not yet published (%s); a worker's sweeper "
                            "publishes them once the broker is back", len(ids), exc)
                continue
            except Exception as exc:  # refused by the broker: the jobs cannot run as sent
                log.exception("the broker refused %d jobs' message; they are failed", len(ids))
                self._failed(ids, f"not published: the broker refused the message ({exc})")
                continue
            self._sent(ids)

