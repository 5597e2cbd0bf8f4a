"""Warehouse failures, split by whether waiting can fix them."""

from schemas.errors import TracestreamError


class WarehouseError(TracestreamError):
    """Root of ClickHouse failures."""


class WarehouseUnavailable(WarehouseError):
    """The warehouse cannot be reached or is overloaded; the same write may succeed later."""

    retriable = True


class WarehouseRejected(WarehouseError):
    """The warehouse refused the data or the SQL itself; retrying the same write cannot help."""


class WarehouseSchemaMismatch(WarehouseRejected):
    """A table differs from what this version writes (missing, a column missing or of another type).

    Every row of every batch would be refused alike, so the writer stops and
    says what differs instead of dead-lettering each event as ``warehouse_rejected``.
    """
