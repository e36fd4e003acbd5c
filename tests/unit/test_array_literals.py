"""db.array_literals: every element quoted, so no value changes an array literal's shape (the
round trip through a real server is in tests/integration/test_store.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from db.array_literals import bool_array, bytea_slices, int_array, text_array, timestamp_array


def test_text_elements_are_quoted_and_escaped_and_none_is_null() -> None:
    assert text_array(["a", None, 'say "hi"', "c:\\dir", "{x},y"]) == (
        '{"a",NULL,"say \\"hi\\"","c:\\\\dir","{x},y"}')
    assert text_array(["NULL"]) == '{"NULL"}'  # the word, not a null
    assert text_array([]) == "{}"


def test_numbers_booleans_and_times() -> None:
    assert int_array([0, -3, 70000]) == "{0,-3,70000}"
    assert bool_array([True, False]) == "{t,f}"
    moment = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    assert timestamp_array([moment, None]) == '{"2026-12-01T12:30:00+00:00",NULL}'


def test_bytea_slices_cut_back_into_each_value() -> None:
    values = [b"ab", None, b"", b"xyz"]
    joined, starts, lengths = bytea_slices(values)
    assert (joined, starts, lengths) == (b"abxyz", "{1,3,3,3}", "{2,NULL,0,3}")
    back = [None if n == "NULL" else joined[int(s) - 1 : int(s) - 1 + int(n)]
            for s, n in zip(starts[1:-1].split(","), lengths[1:-1].split(","), strict=True)]
    assert back == values
    assert bytea_slices([]) == (b"", "{}", "{}")  # no element, not one of length 0
