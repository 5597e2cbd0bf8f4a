"""Failures of the dataset commands, each saying what to do about it."""

from schemas.errors import TracestreamError


class DatasetExists(TracestreamError):
    """A dataset with this name and version was already announced on datasets.events."""


class UnknownDataset(TracestreamError):
    """No dataset with this name (and version) was ever announced."""


class SnapshotTimeout(TracestreamError):
    """The materializer did not commit the dataset's offsets in time; nothing was marked ready."""

    retriable = True
