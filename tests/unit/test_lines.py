"""The capped line reader every JSON-lines peer is read with."""

from __future__ import annotations

import pytest

from beamdeploy_asgi.lines import LineBuffer, LineTooLong, encode, parse_object


def test_lines_split_across_chunks():
    reader = LineBuffer(limit=100)
    assert reader.feed(b'{"a": 1}\n{"b"') == [b'{"a": 1}']
    assert reader.feed(b": 2}\n\n") == [b'{"b": 2}', b""]
    assert reader.rest() == b""


def test_a_line_past_the_cap_is_refused_without_waiting_for_its_end():
    reader = LineBuffer(limit=10)
    assert reader.feed(b"0123456789") == []
    with pytest.raises(LineTooLong, match="longer than"):
        reader.feed(b"A")


def test_a_long_line_inside_one_chunk_is_refused():
    reader = LineBuffer(limit=10)
    with pytest.raises(LineTooLong):
        reader.feed(b"x" * 11 + b"\nshort\n")


def test_a_line_of_exactly_the_cap_is_kept():
    reader = LineBuffer(limit=10)
    assert reader.feed(b"x" * 10 + b"\n") == [b"x" * 10]


def test_rest_is_what_follows_the_last_newline():
    reader = LineBuffer(limit=100)
    reader.feed(b"one\ntwo")
    assert reader.rest() == b"two"
    assert reader.rest() == b""


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b'"text"', b"", b"[" * 100_000, b"\xff\xfe"],
)
def test_only_json_objects_parse(line):
    assert parse_object(line) is None


def test_encode_parse_round_trip():
    message = {"event": "ready", "app_file": "/srv/app/main.py"}
    encoded = encode(message)
    assert encoded.endswith(b"\n") and b"\n" not in encoded[:-1]
    assert parse_object(encoded[:-1]) == message


def test_nan_and_infinity_are_no_json():
    """A record holding one could not be sent on (JSON responses refuse them)."""
    assert parse_object(b'{"x": NaN}') is None
    assert parse_object(b'{"x": -Infinity}') is None
