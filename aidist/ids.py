"""Job ids: UUIDs whose first 48 bits are the time they were made (RFC 9562 version 7).

Ids that grow with time put each new row's primary-key entry, and its history rows' ``job_id``
entries, at the right-hand end of their B-tree indexes, next to the entries of the jobs just
before it: the pages a submit, a claim and a finish touch are the few recent ones, hot in
Postgres' buffers, however many older rows the table holds. Random (version 4) ids touched a
random leaf page of each index per job; on a table of a million finished jobs that cost
claim + finish 20-50% of their speed (measured, README, Performance) and submits 10-25%.
The other 74 bits are random, so ids stay unguessable and unique across processes and hosts.
"""

from __future__ import annotations

import os
import time

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62
_KEEP = ~((0xF << 76) | (0x3 << 62))


def new_job_id() -> str:
    """A fresh job id: a version-7 UUID (milliseconds since the epoch, then random bits)."""
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    digits = f"{(value & _KEEP) | _VERSION_7 | _VARIANT_RFC:032x}"  # str(UUID), without one
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
