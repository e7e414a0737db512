"""Base URLs: their normal form is remembered per spelling; a refusal is given every time."""

from __future__ import annotations

import pytest

from fastsend.config import check_base_url


@pytest.mark.parametrize(
    "raw, normal",
    [
        (" http://ingest:8001// ", "http://ingest:8001"),
        ("https://ingest.example/base path/", "https://ingest.example/base%20path"),
    ],
)
def test_the_normal_form_is_the_same_on_every_call(raw, normal):
    assert [check_base_url(raw) for _ in range(3)] == [normal] * 3


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("ftp://ingest:8001", "http"),
        ("http://user:secret@ingest:8001", "credentials"),
        ("http://ingest:8001/?x=1", "query"),
        ("http://ingest:99999", "[Pp]ort"),
        ("http://", "host"),
        ("http://local host:8001", "must name a valid host"),  # refused here, not looked up in DNS
        ("http://ingest%20:8001", "must name a valid host"),
        ("http://[::g]:8001", "IPv6|valid URL"),
    ],
)
def test_a_refused_url_is_refused_on_every_call(raw, reason):
    for _ in range(3):
        with pytest.raises(ValueError, match=reason):
            check_base_url(raw)
