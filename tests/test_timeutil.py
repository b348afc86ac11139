"""UTC timestamps: utc_now() and parse_utc() are inverses, as strptime would read them."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine.text import parse_utc, utc_now


@given(st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(9999, 1, 1)))
def test_parse_utc_reads_what_strptime_reads(moment: datetime.datetime) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    expected = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert parse_utc(text) == expected


def test_round_trip_of_now() -> None:
    text = utc_now()
    assert parse_utc(text).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" == text


@pytest.mark.parametrize("text", ["", "Z", "2026-01-01T00:00:00.000", "2026-13-01T00:00:00.000Z", "yesterdayZ"])
def test_parse_utc_rejects_what_is_not_a_utc_timestamp(text: str) -> None:
    with pytest.raises(ValueError):
        parse_utc(text)
