"""The UTC-millisecond helpers every module converts times with."""

from datetime import UTC, datetime, timedelta, timezone

from schemas.timeutil import from_millis, iso_millis, to_millis, utc_millis


def test_millis_round_trip_exactly_where_float_arithmetic_is_off_by_one():
    instant = datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=UTC)
    assert to_millis(instant) == 1796040000123 and from_millis(1796040000123) == instant
    for ms in (0, 1, -1, -5, 253402300799999, -2208988800000, 4335469801629, 9388643172672):
        assert to_millis(from_millis(ms)) == ms
    # Instants in the warehouse's range (up to 2299) where the float copies this replaced were off:
    assert int(from_millis(4335469801629).timestamp() * 1000) == 4335469801628
    assert datetime.fromtimestamp(9388643172672 / 1000, UTC) != from_millis(9388643172672)
    assert from_millis(9388643172672) == datetime(2267, 7, 7, 20, 26, 12, 672000, tzinfo=UTC)


def test_naive_is_utc_offsets_convert_and_sub_millisecond_parts_are_truncated():
    naive = datetime(2026, 1, 2, 3, 4, 5, 678999)
    assert utc_millis(naive) == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    shifted = datetime(2026, 1, 2, 5, 4, 5, 678999, tzinfo=timezone(timedelta(hours=2)))
    assert utc_millis(shifted) == utc_millis(naive) and to_millis(shifted) == to_millis(naive)
    assert iso_millis(shifted) == iso_millis(naive) == "2026-01-02T03:04:05.678Z"
    assert iso_millis(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"
