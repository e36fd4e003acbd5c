"""Postgres array literals (``{"a","b",NULL}``) for the hot-path statements' column arrays.

Each hot-path statement (``db.statements``) takes one array per column. Handed a Python list,
psycopg picks and runs a dumper per element in Python; on the one- to few-row statements that
single-message submits and lone-job claims make, that was a third of the statement's client CPU
(measured on a 1-row insert: about 800 µs through SQLAlchemy with lists, about 480 µs as literals
on the driver's cursor). A literal is one ``str``, which psycopg sends as is, and the statement's
``CAST(... AS uuid[])`` has the server parse it.

Every element is quoted, so no value can change the literal's shape: inside quotes only ``"``
and ``\\`` are special, and both are escaped. ``bytea`` columns keep psycopg's binary lists (as
hex text they would double in size).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

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
