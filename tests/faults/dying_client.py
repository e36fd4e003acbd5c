"""A client process that dies at a chosen point of a submit, for fault scenario 8.

``python -m tests.faults.dying_client before-publish N`` writes N job rows and dies before any
message is published; ``after-publish N`` dies after the messages are confirmed but before their
rows are marked sent. The real client code runs; only the step it dies at is replaced by
``os._exit``.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

from aidist.config import Settings
from producers import Client


def die(*_: Any, **__: Any) -> None:
    os._exit(9)


def main() -> None:
    where, count = sys.argv[1], int(sys.argv[2])
    client = Client(Settings())
    if where == "before-publish":
        client.publisher.publish = die  # type: ignore[method-assign]
    elif where == "after-publish":
        client.sent.add = die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {where!r}")
    tag = uuid.uuid4().hex[:8]
    client.submit_many("logged", [f"{where}-{tag}-{i}" for i in range(count)])
    raise SystemExit("the client should have died before returning")


if __name__ == "__main__":
    main()
