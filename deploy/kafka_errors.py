"""Why the local broker could not be fetched, started or reached."""

from schemas.errors import TracestreamError


class BrokerError(TracestreamError):
    """The local broker could not be fetched, formatted, started or stopped.

    Retrying the same call will not help: something on this machine (Java,
    Maven, the data folder) needs fixing first; the message says what.
    """


class BrokerUnreachableError(BrokerError):
    """A broker did not answer in time; it may be starting or briefly down."""

    retriable = True
