"""Poison messages published straight into a queue with pika: dead-lettered, the worker carries
on."""

from __future__ import annotations

import pickle
import uuid

import msgpack
import pytest

from aidist.config import Settings
from aidist.jobs import JobKind
from aidist.transport import dead_letter_queue, queue_name
from producers import Client
from tests.conftest import publish_raw, queue_depth, wait_for

pytestmark = pytest.mark.e2e


def _dead(settings: Settings) -> int:
    return queue_depth(settings, dead_letter_queue(settings.namespace))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (pickle.dumps(([["not", "allowed"]], {}, {})), "application/x-python-serialize"),
        (b"\xc1\xff not msgpack at all", "application/x-msgpack"),
        (msgpack.packb([["junk entries"], {}, {}]), "application/x-msgpack"),
        (msgpack.packb([[[]], {}, {}]), "application/x-msgpack"),
    ],
    ids=["pickle", "undecodable", "wrong-schema", "empty-job-list"],
)
def test_poison_message_is_dead_lettered_and_worker_carries_on(
        workers: object, client: Client, settings: Settings, body: bytes,
        content_type: str) -> None:
    before = _dead(settings)
    publish_raw(settings, queue_name(settings.namespace, JobKind.INFER, "toy-classifier"),
                body, content_type)
    wait_for(lambda: _dead(settings) > before, timeout=60, message="message to be dead-lettered")
    assert client.infer("toy-classifier", f"after poison {uuid.uuid4()}").result(
        timeout=60).shape == (4,)
