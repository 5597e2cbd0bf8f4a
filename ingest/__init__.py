"""Ingest: every way a trace gets into ``traces.raw`` (SDK, JSON Lines, the HTTP door's publishing) and what each refuses."""
