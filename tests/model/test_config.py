"""Settings: every knob's variable is read; argument > environment > default; bad values named."""

from __future__ import annotations

import dataclasses

import pytest

from fastsend import Settings, ValidationError
from fastsend.config import SETTING_ENV_VARS

# For every field: a raw environment string and the value it must become.
ENV_SAMPLES = {
    "url": ("http://ingest:9000", "http://ingest:9000"),
    "api_key": ("s3cret", "s3cret"),
    "max_connections": ("3", 3),
    "max_in_flight": ("33", 33),
    "queue_size": ("7", 7),
    "queue_bytes": ("1048576", 1048576),
    "overflow": ("drop_newest", "drop_newest"),
    "block_timeout": ("0.5", 0.5),
    "request_timeout": ("2.5", 2.5),
    "connect_timeout": ("0.25", 0.25),
    "retries": ("0", 0),
    "backoff_base": ("0.05", 0.05),
    "backoff_max": ("1.5", 1.5),
    "deadline": ("12", 12.0),
    "jpeg_quality": ("80", 80),
    "jpeg_subsampling": ("444", "444"),
    "jpeg_max_side": ("1280", 1280),
    "encode_threads": ("13", 13),
    "loop": ("asyncio", "asyncio"),
    "exit_flush_timeout": ("1.5", 1.5),
    "spool_dir": ("/var/spool/fastsend", "/var/spool/fastsend"),
    "spool_max_bytes": ("4096", 4096),
    "ca_file": (__file__, __file__),
    "tls_verify": ("0", False),
    "retry_after_max": ("30", 30.0),
    "handle_sigterm": ("off", False),
    "max_writers": ("4", 4),
}
# For every field: an argument value different from both the default and the ENV_SAMPLES value.
ARGUMENTS = {
    "url": "https://other:1",
    "api_key": "argument-key",
    "max_connections": 4,
    "max_in_flight": 5,
    "queue_size": 6,
    "queue_bytes": 2048,
    "overflow": "block",
    "block_timeout": 0.75,
    "request_timeout": 9.0,
    "connect_timeout": 3.0,
    "retries": 9,
    "backoff_base": 0.5,
    "backoff_max": 60.0,
    "deadline": 99.0,
    "jpeg_quality": 50,
    "jpeg_subsampling": "422",
    "jpeg_max_side": 640,
    "encode_threads": 17,
    "loop": "uvloop",
    "exit_flush_timeout": 0.0,
    "spool_dir": "/tmp/spool",
    "spool_max_bytes": 8192,
    "ca_file": dataclasses.__file__,
    "tls_verify": False,
    "retry_after_max": 5.0,
    "handle_sigterm": False,
    "max_writers": 2,
}
DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(Settings)}


def test_the_tables_cover_every_setting():
    assert set(ENV_SAMPLES) == set(ARGUMENTS) == set(SETTING_ENV_VARS) == set(DEFAULTS)
    for name in DEFAULTS:
        distinct = 2 if isinstance(DEFAULTS[name], bool) else 3  # a flag has only two values
        assert len({repr(DEFAULTS[name]), repr(ENV_SAMPLES[name][1]), repr(ARGUMENTS[name])}) == distinct, name


def test_defaults():
    settings = Settings.resolve(environ={})
    assert dataclasses.asdict(settings) == DEFAULTS
    assert (settings.url, settings.jpeg_quality, settings.jpeg_subsampling) == ("http://localhost:8001", 95, "420")
    assert settings.request_timeout == 5.0  # the block's default


def test_environment_variable_names():
    assert SETTING_ENV_VARS["api_key"] == "EVENT_INGESTION_API_KEY"
    for name, env in SETTING_ENV_VARS.items():
        if name != "api_key":
            assert env == f"FASTSEND_{name.upper()}"


@pytest.mark.parametrize("name", sorted(SETTING_ENV_VARS))
def test_every_variable_is_read(name):
    raw, expected = ENV_SAMPLES[name]
    value = getattr(Settings.resolve(environ={SETTING_ENV_VARS[name]: raw}), name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("name", sorted(SETTING_ENV_VARS))
def test_argument_beats_environment_beats_default(name):
    env = {SETTING_ENV_VARS[name]: ENV_SAMPLES[name][0]}
    assert getattr(Settings.resolve(environ=env, **{name: ARGUMENTS[name]}), name) == ARGUMENTS[name]
    assert getattr(Settings.resolve(environ=env, **{name: None}), name) == ENV_SAMPLES[name][1]  # None: unset
    assert getattr(Settings.resolve(environ={SETTING_ENV_VARS[name]: ""}), name) == DEFAULTS[name]


def test_resolve_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("FASTSEND_QUEUE_SIZE", "11")
    assert Settings.resolve().queue_size == 11


@pytest.mark.parametrize(
    "raw, expected",
    [(" 8 ", 8), ("8", 8)],
)
def test_whitespace_around_numbers_is_ignored(raw, expected):
    assert Settings.resolve(environ={"FASTSEND_MAX_CONNECTIONS": raw}).max_connections == expected


def test_choices_are_case_and_space_insensitive():
    assert Settings.resolve(environ={"FASTSEND_OVERFLOW": " Drop_Newest "}).overflow == "drop_newest"


@pytest.mark.parametrize("raw", ["none", "off", "None", ""])
def test_max_side_can_be_switched_off(raw):
    assert Settings.resolve(environ={"FASTSEND_JPEG_MAX_SIDE": raw}).jpeg_max_side is None


def test_integral_floats_are_integers_but_fractions_are_not():
    assert Settings.resolve(environ={}, queue_size=3.0).queue_size == 3
    with pytest.raises(ValidationError):
        Settings.resolve(environ={}, queue_size=3.5)


BAD_VALUES = [
    ("url", "localhost:8001"),
    ("url", "http://user:secret@events.local"),
    ("url", "http://events.local:99999"),
    ("max_connections", "x"),
    ("max_connections", "-1"),
    ("max_connections", "0"),
    ("max_connections", "nan"),
    ("max_connections", "inf"),
    ("max_connections", "1.5"),
    ("max_in_flight", "0"),
    ("queue_size", "0"),
    ("queue_size", "ten"),
    ("queue_bytes", "-1"),
    ("queue_bytes", "1e3"),
    ("encode_threads", "0"),
    ("spool_max_bytes", "0"),
    ("retries", "-1"),
    ("retries", "x"),
    ("block_timeout", "-1"),
    ("block_timeout", "nan"),
    ("block_timeout", "inf"),
    ("request_timeout", "0"),
    ("request_timeout", "-inf"),
    ("connect_timeout", "0"),
    ("backoff_base", "-0.1"),
    ("backoff_max", "NaN"),
    ("deadline", "0"),
    ("deadline", "Infinity"),
    ("exit_flush_timeout", "x"),
    ("jpeg_quality", "0"),
    ("jpeg_quality", "101"),
    ("jpeg_quality", "95.5"),
    ("jpeg_subsampling", "421"),
    ("jpeg_max_side", "0"),
    ("jpeg_max_side", "-1"),
    ("overflow", "sometimes"),
    ("overflow", "drop"),
    ("loop", "trio"),
]


@pytest.mark.parametrize("name, raw", BAD_VALUES)
def test_bad_environment_values_name_the_variable(name, raw):
    env = SETTING_ENV_VARS[name]
    with pytest.raises(ValidationError) as info:
        Settings.resolve(environ={env: raw})
    assert info.value.field == env
    assert info.value.value == raw
    assert str(info.value).startswith(f"{env}: {raw!r} must ")


@pytest.mark.parametrize(
    "name, raw", [*BAD_VALUES, ("queue_size", True), ("jpeg_quality", False), ("url", 8001), ("spool_dir", 5)]
)
def test_bad_arguments_name_the_argument(name, raw):
    with pytest.raises(ValidationError) as info:
        Settings.resolve(environ={}, **{name: raw})
    assert info.value.field == name
    assert str(info.value).startswith(f"{name}: {raw!r} must ")


def test_a_bad_variable_is_ignored_when_the_argument_wins():
    assert Settings.resolve(environ={"FASTSEND_QUEUE_SIZE": "x"}, queue_size=5).queue_size == 5


@pytest.mark.parametrize(
    "name, raw", [("retries", "0"), ("block_timeout", "0"), ("jpeg_quality", "1"), ("jpeg_quality", "100")]
)
def test_boundary_values_are_accepted(name, raw):
    assert getattr(Settings.resolve(environ={SETTING_ENV_VARS[name]: raw}), name) == float(raw)


@pytest.mark.parametrize("raw", ["key\r\nX-Admin: yes", "clé", "tab\tkey"])
def test_a_bad_api_key_is_refused_without_showing_it(raw):
    for environ, arguments, field in (
        ({"EVENT_INGESTION_API_KEY": raw}, {}, "EVENT_INGESTION_API_KEY"),
        ({}, {"api_key": raw}, "api_key"),
    ):
        with pytest.raises(ValidationError) as info:
            Settings.resolve(environ=environ, **arguments)
        assert info.value.field == field
        assert raw not in str(info.value) and repr(raw) not in str(info.value)
        assert f"<hidden, {len(raw)} characters> must be printable ASCII" in str(info.value)


def test_an_empty_api_key_means_none():
    assert Settings.resolve(environ={"EVENT_INGESTION_API_KEY": ""}).api_key is None
    assert Settings.resolve(environ={}, api_key="").api_key is None


def test_unknown_arguments_are_a_type_error():
    with pytest.raises(TypeError, match="queue_sise"):
        Settings.resolve(environ={}, queue_sise=3)


def test_settings_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings.resolve(environ={}).retries = 1  # type: ignore[misc]


def test_unknown_fastsend_variables_are_warned_about_once_naming_the_closest(caplog):
    from fastsend.config import warn_unknown_env

    environ = {"FASTSEND_QUEUE_SIZ": "1", "FASTSEND_TIMEOUT": "1", "FASTSEND_URL": "http://h", "OTHER": "x"}
    with caplog.at_level("WARNING", logger="fastsend"):
        assert warn_unknown_env(environ) == ["FASTSEND_QUEUE_SIZ", "FASTSEND_TIMEOUT"]
        assert warn_unknown_env(environ) == []  # once per process and name
    lines = [record.getMessage() for record in caplog.records]
    assert any("FASTSEND_QUEUE_SIZ" in line and "did you mean FASTSEND_QUEUE_SIZE" in line for line in lines)
    assert any("FASTSEND_TIMEOUT" in line and "FASTSEND_REQUEST_TIMEOUT" in line for line in lines)
    assert len(lines) == 2


def test_a_mistyped_writer_keyword_names_the_closest_setting(make_writer):
    with pytest.raises(TypeError, match=r"unknown setting 'queue_siz'; did you mean 'queue_size'\?"):
        make_writer("http://127.0.0.1:9", queue_siz=3)


def test_the_api_key_never_shows_in_the_settings_repr(make_writer):
    settings = Settings.resolve(environ={}, api_key="s3cret-key")
    for shown in (
        repr(settings),
        str(settings),
        f"{settings}",
        repr(make_writer("http://127.0.0.1:9", api_key="s3cret-key").settings),
    ):
        assert "s3cret" not in shown
        assert "api_key='***'" in shown and "queue_size=64" in shown
    assert "api_key=None" in repr(Settings.resolve(environ={}))  # unset stays visibly unset


def test_a_fastsend_api_key_variable_points_to_the_writers_variable(caplog, monkeypatch):
    from fastsend import config

    monkeypatch.setattr(config, "_warned_unknown", set())
    with caplog.at_level("WARNING", logger="fastsend"):
        config.warn_unknown_env({"FASTSEND_API_KEY": "k"})
    (line,) = [record.getMessage() for record in caplog.records]
    assert "did you mean EVENT_INGESTION_API_KEY (the writer's key)" in line
