"""The docs stay true: the settings table is Settings itself, every schema field, service option and metric
has its row, the messages shown are the real ones, every link and every test cited exists, and the
layers import only what docs/architecture.md says they may.

``python tests/cli/test_docs.py`` writes the settings table of docs/settings.md anew from Settings.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest

from fastsend import Event, ValidationError
from fastsend.config import KNOWN_ENV_VARS, Settings
from fastsend.events import COMMON_KEYWORDS, SCHEMA_KEYWORDS
from fastsend.server.options import add_service_arguments

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_MAX_LINES = 350
SETTINGS_TABLE = re.compile(r"(<!-- settings: begin -->\n)(.*?)(<!-- settings: end -->)", re.S)
# Pages other changes are writing: linked already, absent until they land. A page here that exists fails
# test_every_local_link_resolves, so the entry is removed once it arrives.
PENDING_PAGES: set[str] = set()
MiB = 1024 * 1024
# Defaults computed from the machine: what the docs say instead, and the value it stands for here.
MACHINE_DEFAULTS = {"encode_threads": ("max(2, CPU count)", max(2, os.cpu_count() or 2))}


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The text under the heading ``title`` (any level), up to the next heading of that level or above."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"no section {title!r}"
    rest = text[match.end() :]
    following = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
    return rest[: following.start()] if following else rest


def documents() -> dict[str, str]:
    """The Markdown files a reader follows from the README, by path from the root."""
    paths = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")]
    return {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in paths}


# ---------------------------------------------------------------- settings


def _default(spec: Field[Any]) -> str:
    if spec.name in MACHINE_DEFAULTS:
        return MACHINE_DEFAULTS[spec.name][0]
    value = spec.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"`{value}` ({value // MiB} MiB)"
    return f"`{value}`"


def settings_table() -> str:
    """The table of every setting, from Settings: argument, variable, default, accepted values, meaning."""
    rows = ["| argument | variable | default | accepted | meaning |", "| --- | --- | --- | --- | --- |"]
    for spec in fields(Settings):
        accepted = spec.metadata["parse"].accepted
        rows.append(
            f"| `{spec.name}` | `{spec.metadata['env']}` | {_default(spec)} | {accepted} | {spec.metadata['doc']} |"
        )
    return "\n".join(rows) + "\n"


def test_the_settings_page_holds_the_table_settings_makes():
    written = SETTINGS_TABLE.search(page("settings.md"))
    assert written, "docs/settings.md has no <!-- settings: begin/end --> markers"
    assert written.group(2) == settings_table(), "run: python tests/cli/test_docs.py"


def test_the_machine_dependent_defaults_are_what_the_docs_say_they_stand_for():
    for name, (_, value) in MACHINE_DEFAULTS.items():
        assert getattr(Settings(), name) == value


def test_every_variable_fastsend_reads_is_on_the_settings_page():
    documented = set(re.findall(r"^\|(?: `[a-z_]+` \|)? `([A-Z_]+)` \|", page("settings.md"), re.M))
    assert documented >= KNOWN_ENV_VARS, KNOWN_ENV_VARS - documented


def test_the_readmes_main_settings_are_real_with_their_defaults():
    generated = {spec.metadata["env"]: (spec.name, _default(spec)) for spec in fields(Settings)}
    rows = re.findall(r"^\| `([A-Z_]+)` \| `(\w+)` \| ([^|]+) \|", section(README, "Main settings"), re.M)
    assert len(rows) >= 8
    for variable, name, default in rows:
        assert generated[variable][0] == name, variable
        assert default.strip().startswith(generated[variable][1]), (variable, default)


# ---------------------------------------------------------------- events


def test_every_schema_field_has_a_row_with_its_keyword_and_wire_name():
    schemas = section(page("events.md"), "Event schemas")
    for schema, keywords in SCHEMA_KEYWORDS.items():
        assert f"| `Event.{schema}` | " in schemas
        for keyword, wire in keywords.items():
            assert f"| `{keyword}` | `{wire}` |" in schemas, (schema, keyword)
    for keyword in COMMON_KEYWORDS:
        assert f"\n| `{keyword}` | " in schemas


def test_the_readmes_schema_table_names_every_schema_and_field():
    events = section(README, "Events")
    for schema, keywords in SCHEMA_KEYWORDS.items():
        row = re.search(rf"^\| `Event\.{schema}` \|(.*)$", events, re.M)
        assert row, schema
        for keyword, wire in keywords.items():
            assert f"`{keyword}`" in row.group(1), (schema, keyword)
            if wire != keyword and keyword != "external_id":
                assert f"`{keyword}` → `{wire}`" in row.group(1), (schema, keyword)


def test_the_error_messages_shown_are_the_real_ones():
    with pytest.raises(ValidationError) as invalid:
        Event.safety_alert(alert_type="no hardhat!")
    assert f"\n{invalid.value}\n" in page("events.md")
    assert f"`{invalid.value}`" in README.replace("\n", " ")
    with pytest.raises(TypeError) as misspelled:
        Event.safety_alert(alert_typ="fire")
    assert f"`{misspelled.value}`" in page("events.md").replace("\n", " ")


# ---------------------------------------------------------------- the service and the metrics


def test_the_service_page_lists_every_option():
    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    options = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    options.discard("--help")
    documented = set(re.findall(r"^\| `(--[\w-]+)` \|", section(page("service.md"), "Options"), re.M))
    assert documented == options


def test_the_metrics_page_lists_every_metric_of_the_service_with_its_type():
    pytest.importorskip("prometheus_client", reason="needs the metrics extra")
    from fastsend.server.metrics import service_metrics

    metrics = service_metrics(lambda: 0, lambda: 0, 1)
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for family in metrics.registry.collect()  # type: ignore[union-attr]
    }
    table = section(page("metrics.md"), "The reference service's metrics")
    listed = {
        name: kind
        for names, kind in re.findall(r"^\| (`fastsend_service[^|]+) \| (\w+) \|", table, re.M)
        for name in re.findall(r"`(\w+)`", names)
    }
    assert listed == exported


# ---------------------------------------------------------------- the README's shape


def test_the_readme_is_short_and_its_contents_list_its_sections():
    assert len(README.splitlines()) <= README_MAX_LINES
    headings = re.findall(r"^## (.+)$", README, re.M)
    listed = re.findall(r"^- \[(.+?)\]\(#([\w-]+)\)$", section(README, "Contents"), re.M)
    assert [title for title, _ in listed] == [heading for heading in headings if heading != "Contents"]
    assert all(anchor == slug(title) for title, anchor in listed)


def test_every_docs_page_is_linked_from_the_readme():
    for path in DOCS.glob("*.md"):
        assert f"](docs/{path.name})" in README, path.name


# ---------------------------------------------------------------- links and citations


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    without_code = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", without_code, re.M)}


def test_every_local_link_resolves():
    pages = documents()
    for name, text in pages.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL, not a file of the repository
            path, _, anchor = target.partition("#")
            resolved = (ROOT / name).parent / path if path else ROOT / name
            where = os.path.relpath(resolved, ROOT).replace(os.sep, "/")
            if where in PENDING_PAGES:
                continue
            assert resolved.exists(), f"{name} links to {target}, which does not exist"
            if anchor:
                assert anchor in anchors(resolved.read_text(encoding="utf-8")), f"{name}: no heading for {target}"
    for pending in PENDING_PAGES:
        assert not (ROOT / pending).exists(), f"{pending} has landed: remove it from PENDING_PAGES"


def test_every_test_cited_exists():
    for name, text in documents().items():
        for cited in set(re.findall(r"`(tests/[\w/]+\.py)`", text)):
            assert (ROOT / cited).is_file(), f"{name} cites {cited}, which does not exist"


def test_every_python_block_of_the_docs_is_valid_python():
    for name, text in documents().items():
        for block in re.findall(r"^```python\n(.*?)^```", text, re.M | re.S):
            compile(block, name, "exec")


# ---------------------------------------------------------------- the layers


# docs/architecture.md's table: what each layer may import (besides itself).
MODEL = {"fastsend.events", "fastsend.annotations", "fastsend.results", "fastsend.errors", "fastsend.config"}
MAY_IMPORT = {
    "imaging": {"model"},
    "send": {"model", "imaging"},
    "integrations": {"model", "imaging", "send"},
    "server": {"model", "imaging"},
    "model": set(),
}


def layer_of(module: str) -> str | None:
    if module in MODEL:
        return "model"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def imported(path: Path) -> set[str]:
    """Every fastsend module ``path`` imports, at any depth (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastsend"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fastsend")}
    return found


def test_each_layer_imports_only_the_layers_below_it():
    package = ROOT / "fastsend"
    checked = 0
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        layer = layer_of(module)
        if layer is None:
            continue
        checked += 1
        for target in imported(path):
            target_layer = layer_of(target)
            assert target_layer in {layer, *MAY_IMPORT[layer]}, f"{module} ({layer}) imports {target}"
    assert checked >= 30


if __name__ == "__main__":
    settings_page = DOCS / "settings.md"
    text = settings_page.read_text(encoding="utf-8")
    if not SETTINGS_TABLE.search(text):
        sys.exit("docs/settings.md has no <!-- settings: begin/end --> markers")
    settings_page.write_text(SETTINGS_TABLE.sub(lambda m: m.group(1) + settings_table() + m.group(3), text), "utf-8")
    print("docs/settings.md: the settings table written from fastsend.config.Settings")
