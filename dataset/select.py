"""Which records are in a dataset, and in which split: the one decision both read paths make."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from dataset.checks import WHICH, SplitName, Which
from dataset.filter import TraceFilter
from dataset.split import Split
from schemas.errors import InvalidDatasetRequest


def selector(filter: TraceFilter, split: Split) -> Callable[[Mapping[str, Any]], SplitName | None]:
    """``select`` for one record: the split it is in, or None when ``filter`` drops it."""
    assign = split.assign
    if filter.is_empty:
        return lambda record: assign(record["trace_id"])
    matches = filter.matches
    return lambda record: assign(record["trace_id"]) if matches(record) else None


def select(
    records: Iterable[Mapping[str, Any]],
    filter: TraceFilter,
    split: Split,
    which: Which = "all",
) -> Iterator[tuple[SplitName, Mapping[str, Any]]]:
    """``(split name, record)`` for each record that passes ``filter`` and is in ``which``.

    Both read paths call this (or ``selector``, the same decision for one
    record) on the records of the manifest's ranges, so the dataset is defined
    once. Hash with ``which="all"``.
    """
    if which not in WHICH:
        raise InvalidDatasetRequest(f"which split {which!r} is not one of {list(WHICH)}")
    which_split = selector(filter, split)
    for record in records:
        name = which_split(record)
        if name is not None and (which == "all" or which == name):
            yield name, record
