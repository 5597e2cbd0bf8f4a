"""Warehouse failures, split by whether waiting can fix them."""

from schemas.errors import TracestreamError


class WarehouseError(TracestreamError):
    """Root of ClickHouse failures."""


class WarehouseUnavailable(WarehouseError):
    """The warehouse cannot be reached or is overloaded; the same write may succeed later."""

    retriable = True


class WarehouseRejected(WarehouseError):
    """The warehouse refused the data or the SQL itself; retrying the same write cannot help."""
