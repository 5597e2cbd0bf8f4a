"""One root for every tracestream error; each class says whether a retry can help."""


class TracestreamError(Exception):
    """Root of all tracestream errors.

    ``retriable`` tells callers whether the same operation may succeed later
    (the warehouse came back, the broker elected a leader) or never will
    (the input is wrong, the configuration is wrong).
    """

    retriable: bool = False


class ConfigurationError(TracestreamError):
    """The settings or the command line ask for something that cannot work."""


# --- schema registry -------------------------------------------------------


class SchemaDefinitionError(TracestreamError):
    """A schema definition is not valid Avro, or clashes with another name's."""


class IncompatibleSchemaError(TracestreamError):
    """A new schema version cannot read data written with the previous one."""


class UnknownSchemaError(TracestreamError):
    """No schema (or no such version, or no such fingerprint) is registered."""


# --- decoding: every class carries a dead-letter reason code ---------------


class DecodeError(TracestreamError):
    """Bytes that cannot become a record; ``reason`` is the dead-letter code."""

    reason: str = "corrupt_avro"


class NotAvroError(DecodeError):
    """Too short, or no single-object marker ``C3 01`` at the start."""

    reason = "not_avro"


class UnknownFingerprintError(DecodeError, UnknownSchemaError):
    """The writer's schema fingerprint is not registered here."""

    reason = "unknown_schema"

    def __init__(self, fingerprint: bytes, message: str | None = None) -> None:
        self.fingerprint = bytes(fingerprint)
        super().__init__(
            message
            or f"no registered schema has fingerprint {self.fingerprint.hex()}; "
            "register the producer's schema version before publishing with it"
        )


class WrongSchemaError(DecodeError):
    """The event was written with another record type than the one asked for."""

    reason = "unknown_schema"


class CorruptAvroError(DecodeError):
    """The body does not decode with the writer's schema, or bytes remain after it."""

    reason = "corrupt_avro"


class EncodeError(TracestreamError):
    """A record does not fit the schema it is being encoded with."""


# --- producer JSON ----------------------------------------------------------


class InvalidTraceShape(TracestreamError):
    """A producer's JSON trace does not have the expected fields and types."""

    reason: str = "invalid_shape"

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


# --- datasets ---------------------------------------------------------------


class InvalidDatasetRequest(TracestreamError):
    """A dataset request (filter, split, offsets, manifest, export format) cannot be built."""

    retriable = False


class DatasetIntegrityError(TracestreamError):
    """Records read for a dataset break its contract: out of order, duplicated or misshapen.

    Retrying the same read gives the same records, so this is a bug in a reader.
    """

    retriable = False
