"""The dataset's selection (``dataset.select``) as ClickHouse SQL over the ``traces`` table.

The API's list filter and the warehouse export read rows the engine picked,
so the rule each condition states in ``TraceFilter.matches`` and
``Split.assign`` is written here once more in SQL, condition for condition;
``tests/integration/test_dataset_columns.py`` checks the two agree on every
record. Parameter names never come from input.
"""

from __future__ import annotations

import math
from typing import Any

from dataset.filter import TraceFilter
from dataset.split import Split
from schemas.timeutil import to_millis


def filter_sql(where: TraceFilter) -> tuple[list[str], dict[str, Any]]:
    """``where`` as SQL conditions (all must hold) and their parameters."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if where.sources:
        conditions.append("source IN {sources:Array(String)}")
        params["sources"] = list(where.sources)
    if where.trace_versions:
        conditions.append("trace_version IN {trace_versions:Array(Int32)}")
        params["trace_versions"] = list(where.trace_versions)
    for n, (key, value) in enumerate(where.meta):
        conditions.append(f"mapContains(meta, {{mk{n}:String}}) AND meta[{{mk{n}:String}}] = {{mv{n}:String}}")
        params[f"mk{n}"], params[f"mv{n}"] = key, value
    if where.created_from is not None:
        conditions.append("created_at >= fromUnixTimestamp64Milli({created_from:Int64}, 'UTC')")
        params["created_from"] = to_millis(where.created_from)
    if where.created_until is not None:
        conditions.append("created_at < fromUnixTimestamp64Milli({created_until:Int64}, 'UTC')")
        params["created_until"] = to_millis(where.created_until)
    # A record without a score never passes a score bound (NULL compares as not true), nor does NaN.
    for name, condition in (("min_steps", "length(step_index) >= {min_steps:Int64}"),
                            ("max_steps", "length(step_index) <= {max_steps:Int64}"),
                            ("min_score", "score >= {min_score:Float64}"),
                            ("max_score", "score <= {max_score:Float64}")):
        if getattr(where, name) is not None:
            conditions.append(condition)
            params[name] = getattr(where, name)
    return conditions, params


def split_sql(split: Split) -> tuple[str, dict[str, Any]]:
    """An expression that is ``'eval'`` or ``'train'`` as ``split.assign(trace_id)`` is.

    ``assign`` reads the first 8 bytes of ``sha256(salt + trace_id)`` big-endian as ``n`` and
    puts the trace in eval when ``n < share * 2**64``; for an integer ``n`` that is
    ``n < ceil(share * 2**64)``, an exact integer comparison here.
    """
    threshold = math.ceil(split.eval_share * 2.0**64)
    if threshold == 0:
        return "'train'", {}
    return ("if(reinterpretAsUInt64(reverse(substring(SHA256(concat({split_salt:String}, trace_id)), 1, 8))) "
            "< {split_threshold:UInt64}, 'eval', 'train')"), {"split_salt": split.salt, "split_threshold": threshold}
