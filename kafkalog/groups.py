"""The consumer groups of the pipeline's stages, named once below every reader.

Here rather than in ``streams`` because readers above the log but below the
stream processors need them too: a dataset snapshot waits until the
materializer's group has committed every offset it names.
"""

from __future__ import annotations

from deploy.settings import Settings

STAGES = ("validate", "materialize")
"""The processing stages, in pipeline order; a worker runs any of them (``--stages``)."""


def validate_group(settings: Settings) -> str:
    """Consumer group of the validate stage (reads traces.raw)."""
    return f"{settings.app_id}.validate"


def materialize_group(settings: Settings) -> str:
    """Consumer group of the materialize stage (reads traces.valid and traces.dlq)."""
    return f"{settings.app_id}.materialize"
