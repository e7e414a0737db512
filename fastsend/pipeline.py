"""The InferencePipeline sink's import path: ``from fastsend.pipeline import EventSink`` (it lives in
:mod:`fastsend.integrations.pipeline`)."""

from fastsend.integrations.pipeline import EventBuilder, EventSink, Pick

__all__ = ["EventBuilder", "EventSink", "Pick"]
