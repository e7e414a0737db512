"""Where fastsend plugs into inference and operations: the Event Writer block's semantics and its pool of
writers (:mod:`.block`, :mod:`.writer_pool`), the Workflows plugin (:mod:`.workflows`), the
InferencePipeline sink (:mod:`.pipeline`) and the Prometheus collector (:mod:`.metrics`).

Users import these through :mod:`fastsend`, ``fastsend.workflows``, ``fastsend.pipeline`` and
``fastsend.metrics``.
"""
