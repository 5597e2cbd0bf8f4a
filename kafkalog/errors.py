"""Errors of reading the log: offset ranges (dataset replay), topics, groups and subscriptions.

One module below every reader (streams, datasets, the trainer, the SDK), so
each can name the same errors without importing the others.
"""

from __future__ import annotations

from schemas.errors import TracestreamError


class RangeError(TracestreamError):
    """An offset range cannot be read as asked."""


class RangeExpiredError(RangeError):
    """Offsets of a range are gone from the log: retention (or delete-records) removed them.

    The message names the topic, the partition and the missing offsets
    ``[start, log_start)``. Replay cannot bring them back; the warehouse may
    still hold their rows.
    """


class RangeBeyondEndError(RangeError):
    """A range ends past the partition's high watermark, or names a partition that does not exist."""


class RangeReadStalled(RangeError):
    """The broker stopped returning data before the range was read to its end."""

    retriable = True


# --- subscriptions ------------------------------------------------------------


class SubscriptionError(TracestreamError):
    """A subscription cannot be started or continued as asked."""


class UnknownTopicError(SubscriptionError):
    """The topic does not exist on the cluster (the message lists the ones that do)."""


class UnknownGroupError(SubscriptionError):
    """The consumer group has no members and no committed offsets: the broker does not know it."""


class UndecodableRecordError(SubscriptionError):
    """A record's value is not a registered Avro schema's single-object encoding.

    Carries the record's coordinates, the dead-letter ``reason`` code and the
    original bytes. Its offset is not committed: after a restart (with the
    writer's schema registered, say) the same record is read again.
    """

    def __init__(self, message: str, *, topic: str, partition: int, offset: int, reason: str,
                 original: bytes) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason
        self.original = original
