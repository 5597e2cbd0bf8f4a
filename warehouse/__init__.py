"""The ClickHouse seam: one client API over a ClickHouse server or embedded chDB.

It is its own package (not inside ``streams``) because the materializer, the
stats endpoint and the read API all query the same tables.
"""
