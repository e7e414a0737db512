"""The README stays true: its example runs, its commands are the ones that work on a fresh machine, and CI
runs its test command. What moved to docs/ (settings, schemas, service options) is checked in test_docs.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastsend.server import ReferenceService

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


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = [body for language, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S) if not language]
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
        assert "not delivered" not in done.stdout and "spooled" not in done.stdout
        assert service.stored_count() == 21
        assert service.get_event(event_id.group(1))["event_data"] == {"result": "fail", "externalId": "lot-42"}
        alerts = service.list_events(event_schema="safety_alert", limit=100)
        assert len(alerts) == 20
        boxes = [alert["images"][0]["objectDetections"] for alert in alerts]
        assert all(len(found) == 1 and found[0]["class"] == "person" for found in boxes)
