"""The README stays true: every setting documented, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from fastsend.config import SETTING_ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_has_a_row_in_the_settings_table():
    rows = {match.group(1): match.group(2) for match in re.finditer(r"^\| `([A-Z_]+)` \| `(\w+)` \|", README, re.M)}
    assert {variable: name for name, variable in SETTING_ENV_VARS.items()} == rows


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = re.findall(r"^```\n(.*?)^```", README, re.M | re.S)
    test_command = next(line for block in blocks for line in block.splitlines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
