"""producers.sender.BackgroundSender: single submissions published from a thread of their own,
packed across calls, with refused and unreachable publishes handled."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from aidist.errors import ServiceUnavailable
from producers import sender as sender_module
from producers.async_client import name_submitter
from producers.sender import BackgroundSender
from producers.submission import Outgoing, submitter
from tests.unit.doubles import wait_until

WAIT_S = 10.0


class Broker:
    """Records publishes; the first one can be held until released, to let others pile up."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[tuple[str, list[str], int, threading.Thread]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_with: BaseException | None = None

    def publish(self, queue: str, entries: list[dict[str, Any]], sizes: list[int],
                priority: int) -> None:
        self.entered.set()
        assert self.release.wait(WAIT_S)
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((queue, [e["id"] for e in entries], priority,
                           threading.current_thread()))


def _item(job_id: str, queue: str = "q", priority: int = 0, submitter: int = 0) -> Outgoing:
    return Outgoing(queue, priority, {"id": job_id}, 10, submitter)


def _sender(broker: Broker, inline: bool = False
            ) -> tuple[BackgroundSender, list[str], list[tuple[list[str], str]]]:
    sent: list[str] = []
    failed: list[tuple[list[str], str]] = []
    sender = BackgroundSender(broker.publish, sent.extend,
                              lambda ids, error: failed.append((ids, error)), inline=inline)
    return sender, sent, failed


def test_jobs_recorded_while_a_publish_is_out_go_together_in_the_next() -> None:
    broker = Broker(hold_first=True)
    sender, sent, _ = _sender(broker)
    sender.send([_item("a")])
    assert broker.entered.wait(WAIT_S)  # "a" is being published
    sender.send([_item("b")])
    sender.send([_item("c"), _item("p", priority=5)])
    sender.send([_item("d", queue="other")])
    broker.release.set()
    assert sender.wait_sent(WAIT_S)
    assert [(q, ids, p) for q, ids, p, _ in broker.calls] == [
        ("q", ["a"], 0), ("q", ["b", "c"], 0), ("q", ["p"], 5), ("other", ["d"], 0)]
    assert sorted(sent) == ["a", "b", "c", "d", "p"]
    assert all(thread is not threading.current_thread() for *_, thread in broker.calls)
    sender.close()


def test_a_refused_message_fails_its_jobs_and_an_unreachable_broker_leaves_them_unsent() -> None:
    broker = Broker()
    sender, sent, failed = _sender(broker)
    broker.fail_with = ValueError("access refused")
    sender.send([_item("x"), _item("y")])
    assert sender.wait_sent(WAIT_S)
    assert failed and failed[0][0] == ["x", "y"] and "access refused" in failed[0][1]
    broker.fail_with = ServiceUnavailable("RabbitMQ", "amqp://h", "down")
    sender.send([_item("z")])
    assert sender.wait_sent(WAIT_S)
    assert sent == [] and len(failed) == 1  # "z" stays recorded for the sweeper
    broker.fail_with = None
    sender.send([_item("w")])  # the thread carries on
    sender.close()
    assert sent == ["w"]


def test_close_publishes_what_is_queued() -> None:
    broker = Broker(hold_first=True)
    sender, sent, _ = _sender(broker)
    sender.send([_item("a")])
    assert broker.entered.wait(WAIT_S)
    sender.send([_item("b")])
    broker.release.set()
    sender.close()
    assert sent == ["a", "b"]


def test_inline_publishes_before_send_returns() -> None:
    broker = Broker()
    sender, sent, _ = _sender(broker, inline=True)
    sender.send([_item("a")])
    assert sent == ["a"]
    assert broker.calls[0][3] is threading.current_thread()


def test_jobs_recorded_during_a_publish_wait_briefly_for_company_and_others_go_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # So long a linger that only the count can end it within the test's deadline.
    monkeypatch.setattr(sender_module, "LINGER_S", 600.0)
    monkeypatch.setattr(sender_module, "LINGER_MAX_S", 600.0)
    monkeypatch.setattr(sender_module, "LINGER_UP_TO", 2)
    broker = Broker()
    sender, sent, _ = _sender(broker)
    sender.send([_item("a")])  # an idle sender: published at once, no linger
    assert sender.wait_sent(WAIT_S) and sent == ["a"]
    sender.send([_item("b")])  # nothing came in during "a"'s publish: no load, no linger
    assert sender.wait_sent(WAIT_S) and sent == ["a", "b"]
    broker.release.clear()
    broker.entered.clear()
    sender.send([_item("c")])
    assert broker.entered.wait(WAIT_S)  # "c" is being published
    sender.send([_item("d")])  # recorded during a publish: under load
    broker.release.set()
    assert not sender.wait_sent(0.05)  # "d" waits for company
    sender.send([_item("e")])  # two waiting: published together
    assert sender.wait_sent(WAIT_S)
    assert [ids for _, ids, _, _ in broker.calls] == [["a"], ["b"], ["c"], ["d", "e"]]
    sender.close()


def _under_load(sender: BackgroundSender, broker: Broker, sent: list[str]) -> None:
    """Publish "a" while "b" (submitter 1's) is recorded: the sender lingers for company after
    "a"."""
    broker.release.clear()
    sender.send([_item("a")])
    assert broker.entered.wait(WAIT_S)
    sender.send([_item("b", submitter=1)])
    broker.release.set()
    assert wait_until(lambda: "a" in sent)


def _keep_sending(sender: BackgroundSender, sent: list[str], submitter: Any) -> Any:
    """A condition for ``wait_until`` that records one more job (from ``submitter(n)``) at
    each look, until "b" is published."""
    count = 0

    def look() -> bool:
        nonlocal count
        count += 1
        sender.send([_item(f"k{count}", submitter=submitter(count))])
        return "b" in sent

    return look


def _lingering(monkeypatch: pytest.MonkeyPatch, linger_s: float, longest_s: float
               ) -> tuple[BackgroundSender, Broker, list[str]]:
    """A sender with these linger times (no count ends a linger), lingering after "a" with
    submitter 1's "b" waiting."""
    monkeypatch.setattr(sender_module, "LINGER_S", linger_s)
    monkeypatch.setattr(sender_module, "LINGER_MAX_S", longest_s)
    monkeypatch.setattr(sender_module, "LINGER_UP_TO", 10_000)
    broker = Broker(hold_first=True)
    sender, sent, _ = _sender(broker)
    _under_load(sender, broker, sent)
    return sender, broker, sent


def test_a_stream_keeps_a_linger_going_up_to_its_longest(monkeypatch: pytest.MonkeyPatch) -> None:
    # Submitter 1 submits again while its "b" waits: a stream. The quiet gap alone would never end
    # this linger within the test: only its longest does.
    sender, broker, sent = _lingering(monkeypatch, 600.0, 0.05)
    assert wait_until(_keep_sending(sender, sent, lambda n: 1))
    assert [ids[0] for _, ids, _, _ in broker.calls[:2]] == ["a", "b"]
    sender.close()


def test_a_streams_linger_ends_once_no_job_has_come_for_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Its longest would never end this linger within the test: only the quiet gap does.
    sender, _, sent = _lingering(monkeypatch, 0.02, 600.0)
    sender.send([_item("c", submitter=1)])  # a stream, if it comes before "b" went
    assert sender.wait_sent(WAIT_S)  # within the test's deadline, not the linger's longest
    assert sorted(sent) == ["a", "b", "c"]
    sender.close()


def test_callers_waiting_for_their_jobs_never_keep_a_linger_going(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every job from a submitter with none waiting (a closed loop): however many keep coming, the
    # linger ends LINGER_S after the publish, never at its (unreachable) longest.
    sender, _, sent = _lingering(monkeypatch, 0.02, 600.0)
    assert wait_until(_keep_sending(sender, sent, lambda n: 100 + n))
    sender.close()


def test_a_submitter_is_its_thread_or_the_asyncio_task_that_names_itself() -> None:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(submitter()))
    thread.start()
    thread.join()
    assert seen == [thread.ident] and submitter() == threading.get_ident()

    async def one() -> tuple[int, int]:
        name_submitter()
        return await asyncio.to_thread(submitter), id(asyncio.current_task())

    async def two() -> list[tuple[int, int]]:
        return list(await asyncio.gather(one(), one()))

    pairs = asyncio.run(two())
    assert all(inside == task for inside, task in pairs)  # the task, whichever thread ran it
    assert pairs[0][0] != pairs[1][0]
