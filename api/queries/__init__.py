"""SQL per resource. Values only ever reach ClickHouse as query parameters."""
