"""Datasets: exact offset ranges of ``traces.valid`` plus a filter and a split, and everything done with them.

One module per concern, imported in this order (no circle): ``checks`` →
``ranges``, ``filter``, ``split``, ``hashing`` → ``manifest`` → ``events``,
``select`` → ``formats``, ``parquet`` → readers (``warehouse_reader``; Kafka
replay is ``kafkalog.ranges``) → ``catalog``, ``snapshot``, ``export``.
"""
