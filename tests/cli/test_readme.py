"""The README stays true: its example runs, every setting, schema field and service option is documented,
and CI runs the README's test command."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastsend import Event, ValidationError
from fastsend.config import SETTING_ENV_VARS
from fastsend.events import COMMON_KEYWORDS, SCHEMA_KEYWORDS
from fastsend.server import ReferenceService
from fastsend.server.options import add_service_arguments

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE_TIMEOUT = 120.0


def section(title: str) -> str:
    """The README's text under ``## title``, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_every_setting_has_a_row_in_the_settings_table():
    rows = {match.group(1): match.group(2) for match in re.finditer(r"^\| `([A-Z_]+)` \| `(\w+)` \|", README, re.M)}
    assert {variable: name for name, variable in SETTING_ENV_VARS.items()} == rows


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = re.findall(r"^```\n(.*?)^```", README, re.M | re.S)
    test_command = next(line for block in blocks for line in block.splitlines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_readme_claims_the_pythons_the_classifiers_claim_and_requires_python_starts_at_the_first():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib on 3.10
    classified = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    claimed = re.search(r"only Python and pip: ((?:3\.\d+, )*3\.\d+ or 3\.\d+), the versions CI runs", README)
    assert claimed, "the README's list of Python versions"
    assert re.split(r", | or ", claimed.group(1)) == classified
    assert f'requires-python = ">={classified[0]}"' in pyproject


def test_the_fresh_machine_demo_command_is_there_verbatim():
    assert "\npython3 -m venv .venv && .venv/bin/pip install . && .venv/bin/fastsend demo\n" in README


def test_every_python_block_is_valid_python():
    blocks = python_blocks(README)
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "README.md", "exec")


def test_the_complete_example_runs_against_a_loopback_service(tmp_path: Path):
    pytest.importorskip("supervision")
    (example,) = python_blocks(section("A complete example"))
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    with ReferenceService(tmp_path / "service") as service:
        env = {
            **os.environ,
            "FASTSEND_URL": service.url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=EXAMPLE_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        event_id = re.search(r"^quality check stored as (\S+)$", done.stdout, re.M)
        assert event_id, done.stdout
        assert "21 sent, 0 failed, 0 dropped" in done.stdout
        assert service.stored_count() == 21
        assert service.get_event(event_id.group(1))["event_data"] == {"result": "fail", "externalId": "lot-42"}
        alerts = service.list_events(event_schema="safety_alert", limit=100)
        assert len(alerts) == 20
        boxes = [alert["images"][0]["objectDetections"] for alert in alerts]
        assert all(len(found) == 1 and found[0]["class"] == "person" for found in boxes)


def test_every_schema_field_has_a_row_with_its_keyword_and_wire_name():
    schemas = section("Event schemas")
    for schema, keywords in SCHEMA_KEYWORDS.items():
        assert f"| `Event.{schema}` | " in schemas
        for keyword, wire in keywords.items():
            assert f"| `{keyword}` | `{wire}` |" in schemas, (schema, keyword)
    for keyword in COMMON_KEYWORDS:
        assert f"\n| `{keyword}` | " in schemas


def test_the_error_messages_shown_are_the_real_ones():
    with pytest.raises(ValidationError) as invalid:
        Event.safety_alert(alert_type="no hardhat!")
    assert f"\n{invalid.value}\n" in README
    with pytest.raises(TypeError) as misspelled:
        Event.safety_alert(alert_typ="fire")
    assert f"`{misspelled.value}`" in README.replace("\n", " ")


def test_the_reference_service_section_lists_every_option():
    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    options = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    options.discard("--help")
    delimited = re.search(r"<!-- reference-service: begin -->(.*)<!-- reference-service: end -->", README, re.S)
    assert delimited
    documented = set(re.findall(r"^\| `(--[\w-]+)` \|", delimited.group(1), re.M))
    assert documented == options
