"""In-memory doubles of aidist's services, shipped for users' tests (and aidist's own).

A test of code that submits jobs should not need RabbitMQ, Redis and PostgreSQL, nor a fake that
drifts from what they do. These doubles implement the same contracts the real ones do
(``db.interfaces.JobStoreLike``, ``db.interfaces.ResultCacheLike``,
``aidist.transport.interfaces.JobPublisher``), so mypy checks them against the same Protocols,
and ``InMemoryStack`` wires them into a real ``Client`` and a real worker executor::

    from aidist.testing import InMemoryStack

    stack = InMemoryStack()
    client = stack.client()
    job = client.infer("toy-classifier", "hi")
    stack.run_queued()  # the worker's part, in this thread
    job.result(timeout=1)

This is a top layer: importing it imports the worker side (``workers``), which a client process
never does otherwise.
"""

from aidist.testing.blobs import InMemoryBlobStore
from aidist.testing.broker import InMemoryBroker, Published
from aidist.testing.cache import InMemoryCache
from aidist.testing.stack import InMemoryStack
from aidist.testing.store import UNSET, InMemoryStore

__all__ = ["UNSET", "InMemoryBlobStore", "InMemoryBroker", "InMemoryCache", "InMemoryStack",
           "InMemoryStore", "Published"]
