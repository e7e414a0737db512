"""What a user without an optional extra is told: the extra to install, not a bare import error."""

from __future__ import annotations

import sys

import pytest

import fastsend.workflows


def test_loading_the_workflows_plugin_without_inference_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # An import of inference fails as if it were not installed, even of a submodule another test imported.
    for name in [name for name in sys.modules if name == "inference" or name.startswith("inference.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "inference", None)
    monkeypatch.delitem(sys.modules, "fastsend.integrations.workflows.event_writer", raising=False)
    with pytest.raises(ModuleNotFoundError) as info:
        fastsend.integrations.workflows.load_blocks()
    assert str(info.value).startswith(
        'the fastsend.workflows plugin needs inference: pip install "fastsend[inference]"'
    )
    assert fastsend.integrations.workflows.flush() == 0  # nothing loaded, nothing queued
