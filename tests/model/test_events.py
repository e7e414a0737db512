"""The event model: every rule on both sides of its limit, names, timestamps, the error."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from fastsend import Event, ValidationError
from fastsend.events import EVENT_SCHEMAS, INT64_MIN, SCHEMA_KEYWORDS, UINT64_MAX

LONE_SURROGATE = "ok\ud800ok"


@contextmanager
def rejects(field: str, wire: str | None = None) -> Iterator[pytest.ExceptionInfo[ValidationError]]:
    """Expect a ValidationError for exactly ``field`` (the name the caller used), then its wire name if it differs."""
    with pytest.raises(ValidationError) as info:
        yield info
    assert info.value.field == field
    assert info.value.wire_field == wire
    assert str(info.value).startswith(f"{field}: " if wire is None else f"{field} ({wire}): ")


# ---------------------------------------------------------------- schemas and names


@pytest.mark.parametrize(
    "build, schema, expected",
    [
        (
            lambda: Event.quality_check(result="pass", external_id="e1"),
            "quality_check",
            {"result": "pass", "externalId": "e1"},
        ),
        (
            lambda: Event.inventory_count(location="dock 4", item_count=12, item_type="box", external_id="e2"),
            "inventory_count",
            {"location": "dock 4", "itemCount": 12, "itemType": "box", "externalId": "e2"},
        ),
        (
            lambda: Event.safety_alert(alert_type="no_helmet", severity="high", description="d", external_id="e3"),
            "safety_alert",
            {"alertType": "no_helmet", "severity": "high", "description": "d", "externalId": "e3"},
        ),
        (lambda: Event.custom(value="v", external_id="e4"), "custom", {"value": "v", "externalId": "e4"}),
        (
            lambda: Event.operator_feedback(related_event_id="42", feedback="incorrect"),
            "operator_feedback",
            {"relatedEventId": "42", "feedback": "incorrect"},
        ),
    ],
)
def test_snake_case_arguments_map_to_camel_case_wire_names(build, schema, expected):
    event = build()
    assert event.schema == schema
    assert event.data == expected


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: Event.quality_check(), {}),
        (lambda: Event.inventory_count(item_count=0), {"itemCount": 0}),
        (lambda: Event.safety_alert(severity="low"), {"severity": "low"}),
        (lambda: Event.custom(external_id="x"), {"externalId": "x"}),
        (lambda: Event.operator_feedback(feedback="correct"), {"feedback": "correct"}),
    ],
)
def test_absent_fields_are_omitted_not_null(build, expected):
    assert build().data == expected


def test_unknown_schema_is_rejected():
    with rejects("event_schema"):
        Event("operator_review", {})


def test_a_key_of_another_schema_is_rejected_by_name():
    with rejects("event_data.location"):
        Event("quality_check", {"location": "dock"})


def test_explicit_null_in_event_data_is_rejected():
    with rejects("event_data.value"):
        Event("custom", {"value": None})


def test_event_is_immutable():
    event = Event.custom(value="v")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.schema = "quality_check"  # type: ignore[misc]


# ---------------------------------------------------------------- text limits


@pytest.mark.parametrize(
    "build",
    [
        lambda text: Event.quality_check(external_id=text),
        lambda text: Event.inventory_count(external_id=text),
        lambda text: Event.safety_alert(external_id=text),
        lambda text: Event.custom(external_id=text),
    ],
    ids=["quality_check", "inventory_count", "safety_alert", "custom"],
)
def test_external_id_is_at_most_1000_chars(build):
    assert build("e" * 1000).data["externalId"] == "e" * 1000
    with rejects("external_id", "event_data.externalId"):
        build("e" * 1001)


@pytest.mark.parametrize(
    "build, keyword, wire",
    [
        (lambda text: Event.inventory_count(location=text), "location", "location"),
        (lambda text: Event.inventory_count(item_type=text), "item_type", "itemType"),
        (lambda text: Event.safety_alert(alert_type=text), "alert_type", "alertType"),
        (lambda text: Event.operator_feedback(related_event_id=text), "related_event_id", "relatedEventId"),
    ],
)
def test_short_text_fields_are_at_most_1000_chars(build, keyword, wire):
    assert build("a" * 1000).data[wire] == "a" * 1000
    with rejects(keyword, f"event_data.{wire}") as info:
        build("a" * 1001)
    assert info.value.rule == "must be at most 1000 characters (got 1001)"


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda text: Event.safety_alert(description=text), "description"),
        (lambda text: Event.custom(value=text), "value"),
    ],
)
def test_long_text_is_at_most_10000_chars(build, key):
    assert build("d" * 10_000).data[key] == "d" * 10_000
    with rejects(key, f"event_data.{key}"):
        build("d" * 10_001)


def test_solution_is_at_most_1000_chars():
    assert Event.custom(solution="s" * 1000).solution == "s" * 1000
    with rejects("solution"):
        Event.custom(solution="s" * 1001)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: Event.quality_check(external_id=LONE_SURROGATE), ("external_id", "event_data.externalId")),
        (lambda: Event.inventory_count(location=LONE_SURROGATE), ("location", "event_data.location")),
        (lambda: Event.inventory_count(item_type=LONE_SURROGATE), ("item_type", "event_data.itemType")),
        (lambda: Event.safety_alert(description=LONE_SURROGATE), ("description", "event_data.description")),
        (lambda: Event.custom(value=LONE_SURROGATE), ("value", "event_data.value")),
        (
            lambda: Event.operator_feedback(related_event_id=LONE_SURROGATE),
            ("related_event_id", "event_data.relatedEventId"),
        ),
        (lambda: Event.custom(custom_metadata={"k": LONE_SURROGATE}), ("custom_metadata['k']", None)),
        (lambda: Event.custom(solution=LONE_SURROGATE), ("solution", None)),
    ],
)
def test_lone_surrogates_are_rejected(build, field):
    with rejects(*field) as info:
        build()
    assert "surrogate" in info.value.rule


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: Event.custom(value=5), ("value", "event_data.value")),
        (lambda: Event.quality_check(external_id=b"bytes"), ("external_id", "event_data.externalId")),
        (lambda: Event.inventory_count(location=["dock"]), ("location", "event_data.location")),
    ],
)
def test_text_fields_must_be_strings(build, field):
    with rejects(*field):
        build()


def test_non_ascii_and_emoji_text_is_accepted_unchanged():
    text = 'ünï 日本 😀 "q" \\ \n'
    assert Event.custom(value=text).data["value"] == text


# ---------------------------------------------------------------- enums and patterns


@pytest.mark.parametrize(
    "build, good, bad",
    [
        (lambda v: Event.quality_check(result=v), ["pass", "fail"], ["PASS", "passed", "", 1]),
        (lambda v: Event.safety_alert(severity=v), ["low", "medium", "high"], ["critical", "Low", " low"]),
        (
            lambda v: Event.operator_feedback(feedback=v),
            ["correct", "incorrect", "inconclusive"],
            ["wrong", "Correct", True],
        ),
    ],
    ids=["result", "severity", "feedback"],
)
def test_enum_fields(build, good, bad):
    for value in good:
        assert value in build(value).data.values()
    for value in bad:
        with pytest.raises(ValidationError) as info:
            build(value)
        assert info.value.value == value


@pytest.mark.parametrize("value", ["fire", "no_helmet", "Zone-3_B", "0", "a-"])
def test_alert_type_pattern_accepts(value):
    assert Event.safety_alert(alert_type=value).data["alertType"] == value


@pytest.mark.parametrize("value", ["", "no helmet", "fire!", "zone.3", "ünï", "fire\n", "a/b"])
def test_alert_type_pattern_rejects(value):
    with rejects("alert_type", "event_data.alertType") as info:
        Event.safety_alert(alert_type=value)
    assert "[A-Za-z0-9_-]+" in info.value.rule


# ---------------------------------------------------------------- item_count


@pytest.mark.parametrize("value", [0, 1, 7, np.int64(3), np.uint8(255), np.int32(0), UINT64_MAX])
def test_item_count_accepts_non_negative_integers(value):
    count = Event.inventory_count(item_count=value).data["itemCount"]
    assert count == int(value)
    assert type(count) is int


@pytest.mark.parametrize(
    "value", [-1, np.int64(-1), UINT64_MAX + 1, True, False, np.bool_(True), 1.0, 2.5, "3", np.float64(3)]
)
def test_item_count_rejects(value):
    with rejects("item_count", "event_data.itemCount"):
        Event.inventory_count(item_count=value)


# ---------------------------------------------------------------- custom_metadata


def test_metadata_allows_100_keys_not_101():
    hundred = {f"k{i}": i for i in range(100)}
    assert Event.custom(custom_metadata=hundred).custom_metadata == hundred
    with rejects("custom_metadata") as info:
        Event.custom(custom_metadata={**hundred, "one_more": 1})
    assert "100 keys" in info.value.rule


def test_metadata_key_is_at_most_100_chars():
    assert Event.custom(custom_metadata={"k" * 100: 1}).custom_metadata == {"k" * 100: 1}
    with rejects("custom_metadata key"):
        Event.custom(custom_metadata={"k" * 101: 1})


@pytest.mark.parametrize("key", ["a", "Zone 3", "camera-id_2", " ", "-_- ", "0123456789"])
def test_metadata_key_charset_accepts(key):
    assert Event.custom(custom_metadata={key: "v"}).custom_metadata == {key: "v"}


@pytest.mark.parametrize("key", ["", "a.b", "a/b", 'q"uote', "back\\slash", "ünï", "emoji😀", "tab\t", "nl\n", 5, None])
def test_metadata_key_charset_rejects(key):
    with rejects("custom_metadata key"):
        Event.custom(custom_metadata={key: "v"})


def test_metadata_string_value_is_at_most_1000_chars():
    assert Event.custom(custom_metadata={"k": "v" * 1000}).custom_metadata == {"k": "v" * 1000}
    with rejects("custom_metadata['k']"):
        Event.custom(custom_metadata={"k": "v" * 1001})


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), np.float16("-inf")],
    ids=repr,
)
def test_metadata_non_finite_numbers_are_rejected(value):
    with rejects("custom_metadata['k']") as info:
        Event.custom(custom_metadata={"k": value})
    assert "finite" in info.value.rule


@pytest.mark.parametrize("value", [None, {"nested": 1}, [1, 2], (1,), b"bytes", {1, 2}, np.array([1])], ids=repr)
def test_metadata_values_must_be_flat_scalars(value):
    with rejects("custom_metadata['k']"):
        Event.custom(custom_metadata={"k": value})


@pytest.mark.parametrize(
    "value, expected_type",
    [
        (True, bool),
        (False, bool),
        (np.bool_(True), bool),
        (1, int),
        (0, int),
        (np.int64(5), int),
        (1.5, float),
        (np.float32(0.5), float),
        ("text", str),
    ],
    ids=repr,
)
def test_metadata_values_keep_their_json_type(value, expected_type):
    # bool stays bool and int stays int: True is an int in Python but not in JSON.
    stored = Event.custom(custom_metadata={"k": value}).custom_metadata["k"]
    assert type(stored) is expected_type
    assert stored == value


@pytest.mark.parametrize(
    "value, ok", [(INT64_MIN, True), (INT64_MIN - 1, False), (UINT64_MAX, True), (UINT64_MAX + 1, False)]
)
def test_metadata_integers_fit_in_64_bits(value, ok):
    if ok:
        assert Event.custom(custom_metadata={"k": value}).custom_metadata == {"k": value}
    else:
        with rejects("custom_metadata['k']"):
            Event.custom(custom_metadata={"k": value})


@pytest.mark.parametrize("metadata", [["k", "v"], "k=v", 5])
def test_metadata_must_be_a_mapping(metadata):
    with rejects("custom_metadata"):
        Event.custom(custom_metadata=metadata)


def test_metadata_is_detached_from_the_callers_dict():
    metadata = {"k": "v"}
    event = Event.custom(custom_metadata=metadata)
    metadata["k"] = "changed"
    metadata["extra"] = 1
    assert event.custom_metadata == {"k": "v"}


def test_empty_metadata_is_kept_and_absent_metadata_is_none():
    assert Event.custom(custom_metadata={}).custom_metadata == {}
    assert Event.custom().custom_metadata is None


# ---------------------------------------------------------------- the error


def test_validation_error_is_a_value_error_naming_field_value_and_rule():
    with pytest.raises(ValueError) as info:
        Event.safety_alert(severity="critical")
    error = info.value
    assert isinstance(error, ValidationError)
    assert (error.field, error.wire_field, error.value) == ("severity", "event_data.severity", "critical")
    message = str(error)
    assert message.startswith("severity (event_data.severity): ")
    assert repr("critical") in message
    assert "low, medium, high" in message and error.rule in message


def test_validation_error_truncates_huge_values():
    huge = "x" * 1_000_000
    with pytest.raises(ValidationError) as info:
        Event.custom(value=huge)
    message = str(info.value)
    assert len(message) < 300
    assert message.startswith("value (event_data.value): 'xxx")
    assert f"({len(repr(huge))} chars)" in message
    assert "10000" in message
    assert info.value.value is huge


def test_validation_error_survives_a_hostile_repr():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    with pytest.raises(ValidationError, match="Hostile"):
        Event.custom(custom_metadata={"k": Hostile()})


@pytest.mark.parametrize(
    "build, keyword, wire",
    [
        (lambda: Event.safety_alert(alert_type="no hardhat!"), "alert_type", "alertType"),
        (lambda: Event.inventory_count(item_count=-1), "item_count", "itemCount"),
        (lambda: Event.inventory_count(item_type=3), "item_type", "itemType"),
        (lambda: Event.custom(external_id="e" * 1001), "external_id", "externalId"),
        (lambda: Event.operator_feedback(related_event_id=42), "related_event_id", "relatedEventId"),
        (lambda: Event.quality_check(result="maybe"), "result", "result"),
    ],
)
def test_errors_name_the_keyword_the_caller_typed_then_the_wire_name(build, keyword, wire):
    with rejects(keyword, f"event_data.{wire}"):
        build()


def test_every_wire_field_has_exactly_one_constructor_keyword():
    assert {schema: set(keywords.values()) for schema, keywords in SCHEMA_KEYWORDS.items()} == {
        schema: set(rules) for schema, rules in EVENT_SCHEMAS.items()
    }


def test_direct_construction_names_the_wire_key_the_caller_typed():
    with rejects("event_data.alertType"):
        Event("safety_alert", {"alertType": "no hardhat!"})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Event.safety_alert(alert_typ="f"), "Event.safety_alert() {} 'alert_typ'; did you mean 'alert_type'?"),
        (lambda: Event.custom(custom_metdata=1), "Event.custom() {} 'custom_metdata'; did you mean 'custom_metadata'?"),
        (lambda: Event.quality_check(zzz=1), "Event.quality_check() {} 'zzz'"),
        (
            lambda: Event.inventory_count(itemCount=3),
            "Event.inventory_count() {} 'itemCount'; did you mean 'item_count'?",
        ),
    ],
)
def test_a_misspelled_keyword_names_the_constructor_and_the_close_match(build, message):
    with pytest.raises(TypeError) as info:
        build()
    assert str(info.value) == message.format("got an unexpected keyword argument")


# ---------------------------------------------------------------- inference_timestamp


def test_timestamp_is_taken_at_creation_in_utc_with_offset():
    before = datetime.now(timezone.utc)
    event = Event.custom(value="v")
    after = datetime.now(timezone.utc)
    stamp = event.inference_timestamp
    assert stamp.endswith("+00:00")
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= after
    assert event.inference_timestamp == stamp  # read again later: unchanged


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 11, 26, 4, 44, 12, 123456, tzinfo=timezone.utc),
        datetime(2026, 11, 26, 6, 44, 12, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ],
)
def test_a_supplied_aware_datetime_is_honoured_in_utc(when):
    stamp = Event.custom(inference_timestamp=when).inference_timestamp
    assert stamp.endswith("+00:00")
    assert datetime.fromisoformat(stamp) == when


# text -> the UTC text sent; written out by hand, so the parser is checked against the calendar, not itself.
ACCEPTED_TIMESTAMPS = {
    "2026-11-26T04:44:12Z": "2026-11-26T04:44:12+00:00",  # JavaScript's toISOString() without millis
    "2026-11-26T04:44:12.123Z": "2026-11-26T04:44:12.123000+00:00",  # toISOString()
    "2026-11-26T04:44:12z": "2026-11-26T04:44:12+00:00",
    "2026-11-26T04:44:12+00:00": "2026-11-26T04:44:12+00:00",
    "2026-11-26T04:44:12-00:00": "2026-11-26T04:44:12+00:00",
    "2026-11-26T10:14:12+05:30": "2026-11-26T04:44:12+00:00",
    "2026-11-25T20:44:12-08:00": "2026-11-26T04:44:12+00:00",
    "2026-11-26T10:14:12+0530": "2026-11-26T04:44:12+00:00",
    "2026-11-26T06:44:12+02": "2026-11-26T04:44:12+00:00",  # PostgreSQL's text form
    "2026-11-26 04:44:12+00:00": "2026-11-26T04:44:12+00:00",
    "2026-11-26t04:44:12Z": "2026-11-26T04:44:12+00:00",
    "2026-11-26T04:44Z": "2026-11-26T04:44:00+00:00",
    "2026-11-26T04:44:12+00:00:30": "2026-11-26T04:43:42+00:00",  # datetime.isoformat() of an offset with seconds
    "20261126T044412Z": "2026-11-26T04:44:12+00:00",  # the basic form
    "20261126T104412.5+0600": "2026-11-26T04:44:12.500000+00:00",
    # fractional seconds of every length from 1 to 9 digits
    "2026-11-26T04:44:12.5Z": "2026-11-26T04:44:12.500000+00:00",
    "2026-11-26T04:44:12.12Z": "2026-11-26T04:44:12.120000+00:00",
    "2026-11-26T04:44:12.1234Z": "2026-11-26T04:44:12.123400+00:00",
    "2026-11-26T04:44:12.12345Z": "2026-11-26T04:44:12.123450+00:00",
    "2026-11-26T04:44:12.123456+00:00": "2026-11-26T04:44:12.123456+00:00",
    "2026-11-26T04:44:12.000001Z": "2026-11-26T04:44:12.000001+00:00",
    "2026-11-26T04:44:12,5Z": "2026-11-26T04:44:12.500000+00:00",  # ISO-8601's decimal comma
    # past the microsecond (.NET writes 7 digits, Go and Java 9): truncated, never rounded up
    "2026-11-26T04:44:12.1234567Z": "2026-11-26T04:44:12.123456+00:00",
    "2026-11-26T04:44:12.123456789Z": "2026-11-26T04:44:12.123456+00:00",
    "2026-11-26T04:44:12.999999999Z": "2026-11-26T04:44:12.999999+00:00",
    "9999-12-31T23:59:59.999999999Z": "9999-12-31T23:59:59.999999+00:00",  # rounding would leave the calendar
    "2026-11-26T04:44:12.0000009Z": "2026-11-26T04:44:12+00:00",
}


@pytest.mark.parametrize("text, sent", ACCEPTED_TIMESTAMPS.items(), ids=list(ACCEPTED_TIMESTAMPS))
def test_an_iso_8601_string_with_an_offset_is_sent_in_utc(text, sent):
    assert Event.custom(inference_timestamp=text).inference_timestamp == sent


# text -> the words the rule must say
REFUSED_TIMESTAMPS = {
    "2026-11-26T04:44:12": "must carry a UTC offset",
    "20261126T044412": "must carry a UTC offset",
    "2026-11-26": "must be an ISO-8601 timestamp (YYYY-MM-DDTHH:MM",
    "2026-11-26T04Z": "must be an ISO-8601 timestamp",  # minutes are required
    "2026-11-26T04:44:12.Z": "must be an ISO-8601 timestamp",
    "2026-11-26T04:44:12.1234567890Z": "at most 9 digits of fractional seconds (got 10)",
    "2026-11-26T04:44:12Z ": "must be an ISO-8601 timestamp",
    " 2026-11-26T04:44:12Z": "must be an ISO-8601 timestamp",
    "2026-11-26_04:44:12Z": "must be an ISO-8601 timestamp",
    "2026-W48-4T04:44:12Z": "must be an ISO-8601 timestamp",  # week dates
    "20261126T04:44:12Z": "must be an ISO-8601 timestamp",  # basic date, extended time
    "\u0662\u0660\u0662\u0666-11-26T04:44:12Z": "must be an ISO-8601 timestamp",  # digits, but not ASCII ones
    "2026-13-01T00:00:00Z": "must be a real date and time (month must be in 1..12)",
    "2026-02-29T00:00:00Z": "must be a real date and time (day is out of range for month)",
    "2026-11-26T24:00:00Z": "must be a real date and time (hour must be in 0..23)",
    "2026-12-31T23:59:60Z": "must be a real date and time (second must be in 0..59)",
    "0000-01-01T00:00:00Z": "must be a real date and time (year 0 is out of range)",
    "2026-11-26T04:44:12+24:00": "UTC offset between -23:59 and +23:59 (got +24:00)",
    "2026-11-26T04:44:12-05:60": "UTC offset between -23:59 and +23:59 (got -05:60)",
    "0001-01-01T00:00:00+01:00": "must fall within years 1 to 9999 in UTC",
    "yesterday": "must be an ISO-8601 timestamp",
    "": "must be an ISO-8601 timestamp",
}


@pytest.mark.parametrize("text, rule", REFUSED_TIMESTAMPS.items(), ids=[repr(text) for text in REFUSED_TIMESTAMPS])
def test_a_timestamp_outside_the_rule_is_refused_saying_which_rule(text, rule):
    with rejects("inference_timestamp") as info:
        Event.custom(inference_timestamp=text)
    assert info.value.value == text
    assert rule in info.value.rule


def test_every_aware_datetime_isoformat_writes_is_read_back_as_the_same_moment():
    offsets = [timedelta(0), timedelta(hours=5, minutes=30), -timedelta(hours=23, minutes=59, seconds=59)]
    offsets.append(timedelta(minutes=19, seconds=32, microseconds=13))  # Amsterdam's mean time, in 1900
    for offset in offsets:
        for naive in (datetime(2026, 11, 26, 4, 44, 12), datetime(2026, 1, 2, 3, 4, 5, 6)):
            for timespec in ("minutes", "seconds", "milliseconds", "microseconds"):
                text = naive.replace(tzinfo=timezone(offset)).isoformat(timespec=timespec)
                sent = Event.custom(inference_timestamp=text).inference_timestamp
                # 3.10's fromisoformat reads what isoformat writes: a fair judge of these texts.
                assert datetime.fromisoformat(sent) == datetime.fromisoformat(text), text


@pytest.mark.parametrize("when", [datetime(2026, 11, 26, 4, 44), "2026-11-26T04:44:12", "yesterday", 1700000000, ""])
def test_naive_or_unparseable_timestamps_are_rejected(when):
    with rejects("inference_timestamp"):
        Event.custom(inference_timestamp=when)
