"""Log filters that keep a worker's log readable while Kafka is unreachable."""

from __future__ import annotations

import logging
import time


class QuietRetries(logging.Filter):
    """Let each kind of aiokafka message through once per ``every_s``.

    While a broker is down aiokafka logs the same connection errors on every
    retry, about ten a second; one of each says what is wrong.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key, now = (record.name, record.msg), time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True


def quiet_kafka_retries() -> None:
    """Put ``QuietRetries`` on every handler of the root logger (faust's worker installs its own)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, QuietRetries) for f in handler.filters):
            handler.addFilter(QuietRetries())
