"""Postgres array literals (``{"a","b",NULL}``) for the hot-path statements' column arrays.

Each hot-path statement (``db.statements``) takes one array per column. Handed a Python list,
psycopg picks and runs a dumper per element in Python; on the one- to few-row statements that
single-message submits and lone-job claims make, that was a third of the statement's client CPU
(measured on a 1-row insert: about 800 µs through SQLAlchemy with lists, about 480 µs as literals
on the driver's cursor). A literal is one ``str``, which psycopg sends as is, and the statement's
``CAST(... AS uuid[])`` has the server parse it.

Every element is quoted, so no value can change the literal's shape: inside quotes only ``"``
and ``\\`` are special, and both are escaped.

``bytea`` columns (payloads, results) go as one binary value, every element's bytes joined, with
each element's start and length as integer arrays; the statement cuts them apart with
``substring`` (``bytea_slices``). A list of ``bytes`` is the slowest parameter psycopg dumps: per
element in Python, as escaped text the server then parses. Measured here on 128 results of 100
bytes: 417 µs of client CPU and 723 µs per statement, against 66 and 128; on 1,024 minilm vectors
(1.5 kB each), a worker's finish: 28 ms and 67 ms against 0.7 and 1.1 ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import accumulate

NULL = "NULL"


def quoted(value: str | None) -> str:
    """One element: quoted and escaped, or ``NULL``."""
    if value is None:
        return NULL
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Iterable[object | None]) -> str:
    """An array of text (or of anything the server parses from text: uuid, jsonb, timestamptz
    in ISO form) from each value's ``str``; ``None`` is ``NULL``."""
    return "{" + ",".join(quoted(None if v is None else str(v)) for v in values) + "}"


def int_array(values: Iterable[int]) -> str:
    """An array of integers (``int``, ``smallint``, ``bigint``)."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def bool_array(values: Iterable[bool]) -> str:
    """An array of booleans."""
    return "{" + ",".join("t" if v else "f" for v in values) + "}"


def timestamp_array(values: Iterable[datetime | None]) -> str:
    """An array of ``timestamptz`` (ISO 8601 with the offset; a naive time is read in the
    session's time zone, as psycopg would send it); ``None`` is ``NULL``."""
    return text_array(None if v is None else v.isoformat() for v in values)


def bytea_slices(values: Sequence[bytes | None]) -> tuple[bytes, str, str]:
    """A ``bytea`` column as (every value's bytes joined, each one's 1-based start, each one's
    length), the lengths ``NULL`` for ``None``: ``substring(joined FROM start FOR length)``
    gives each value back, and ``NULL`` for a ``None`` (substring of a NULL length is NULL)."""
    lengths = [0 if v is None else len(v) for v in values]
    starts = list(accumulate(lengths, initial=1))[:-1]
    return (b"".join(v for v in values if v is not None),
            int_array(starts),
            "{" + ",".join("NULL" if v is None else str(n)
                           for v, n in zip(values, lengths, strict=True)) + "}")
