"""What a user without an optional extra is told: the extra to install, not a bare import error."""

from __future__ import annotations

import sys

import pytest

import fastsend.workflows


def test_loading_the_workflows_plugin_without_inference_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "inference", None)  # an import of inference fails as if it were not installed
    monkeypatch.delitem(sys.modules, "fastsend.integrations.workflows.event_writer", raising=False)
    with pytest.raises(ModuleNotFoundError) as info:
        fastsend.integrations.workflows.load_blocks()
    assert str(info.value).startswith(
        'the fastsend.workflows plugin needs inference: pip install "fastsend[inference]"'
    )
    assert fastsend.integrations.workflows.flush() == 0  # nothing loaded, nothing queued
