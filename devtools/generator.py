"""Deterministic synthetic reasoning traces: demos, tests, benchmarks.

This module is the stream (which event is event ``index`` of stream ``seed``);
the content lives in ``devtools.word_problems`` and ``devtools.arith``, the
breakages in ``devtools.breakage``, JSON lines and publishing in
``devtools.output``.

Every trace is a multi-step arithmetic word problem (shopping totals, travel
rates, bill splitting, unit conversions, percentages, production counts,
savings) with worked steps of types ``restate``, ``plan``, ``calculate``,
``check`` and ``conclude`` (3 to 12 of them) and the correct final answer as
text. Numbers in answers and in calculations are written plainly: no currency
sign, no thousands separator, no trailing zeros ("42", "23.4", "7.25").
Every ``calculate`` step contains its arithmetic as ``a op b … = r`` with the
operators ``+ − × ÷`` (usual precedence), and the last ``calculate`` step's
result is the final answer, so a test can recompute every trace.

A second kind, ``arith`` (``generate_events(..., kind="arith")``), gives short
column-arithmetic traces (``What is 37 + 48?``, two steps, at most 160 bytes
rendered) from its own seeded stream: small enough that a byte-level model
with a short context sees the whole example, answer included.

Determinism: event ``index`` of stream ``seed`` depends only on
``(seed, index)`` (its own ``random.Random``), never on global random state,
uuid4 or the clock: the trace id is derived from ``(seed, index)`` and
``created_at`` is ``BASE_TIME + index`` seconds. The same ``(count, seed,
broken_share)`` always yields the same events, and a shorter stream is a
prefix of a longer one.

Schema versions: records of schema v1 have no ``model`` key; records of v2
carry ``model`` (a string, or None for human-written traces).
``GeneratedEvent.schema_version`` says which one to encode with.

Broken events (``broken_share`` of the stream, default 5 %). Each is of one
known kind; the kind's value is the dead-letter reason the validate stage must
give it (``schemas.validation.Reason``):

=====================  =========  ==========================================
kind                   form       construction
=====================  =========  ==========================================
no_steps               record     ``steps == []``
duplicate_step_index   record     one step index repeated
step_too_long          record     one step of 20,500–26,000 chars (a runaway
                                  re-check loop)
prompt_too_long        record     prompt with a pasted price list, > 50,000
                                  chars
too_many_steps         record     1,001–1,100 short steps (a running count)
event_too_large        record     ~60 steps of ≤ 19,900 chars each: every
                                  field rule holds, but the Avro event is
                                  ~1.15 MB > 1 MiB, so only the size rule
                                  (checked first) trips. Rare (weight 0.05)
                                  to keep streams light.
not_avro               payload    the trace as JSON text, or gzipped JSON
unknown_schema         payload    ``C3 01`` + the fingerprint of an
                                  unregistered "Trace v3" (an extra ``tags``
                                  field) + its Avro body
corrupt_avro           payload    a registered Trace encoding, truncated or
                                  with bytes appended (needs ``schemas``)
=====================  =========  ==========================================

"record" events are valid Avro (encode ``record`` with ``schema_version``);
the rule they break is found by the validator after decoding. "payload"
events are raw message bytes to publish as they are (key = trace id).

JSONL (``devtools.output.write_jsonl``, behind ``tracestream generate``): record events,
broken ones included, become JSON lines; the validator later dead-letters
them with the same reason. Payload events have no JSON form, so each becomes
its JSON-level counterpart, which ``publish`` rejects with a line number
before anything reaches Kafka:

- ``not_avro`` → a line cut off inside a string (``{"trace_id": "…", "prompt": "A sh``) → ``not_json``;
- ``corrupt_avro`` → a JSON line with a comma removed → ``not_json``;
- ``unknown_schema`` → an object in another producer's shape
  (``question``/``reasoning``/``answer``) → ``invalid_shape``.
"""


from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator

from devtools.arith import generate_arith_trace
from devtools.base import GeneratedEvent, schema_version_of
from devtools.breakage import PAYLOAD_KINDS, break_payload, break_record, pick_kind
from devtools.word_problems import generate_trace, trace_id_for

TRACE_KINDS = ("word", "arith")
"""``word``: the multi-step word problems (the default); ``arith``: short column arithmetic."""


def _stream_trace_id(stream: str, seed: int, index: int) -> str:
    digest = hashlib.sha256(f"{stream}-generate:{seed}:{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))



def generate_event(seed: int, index: int, broken_share: float = 0.05, kind: str = "word") -> GeneratedEvent:
    """Event ``index`` of stream ``seed`` of trace kind ``kind``; depends on nothing else."""
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TRACE_KINDS)}, got {kind!r}")
    stream = "tracestream" if kind == "word" else f"tracestream-{kind}"
    rng = random.Random(f"{stream}:{seed}:{index}")
    broken = rng.random() < broken_share
    breakage = pick_kind(rng) if broken else None
    record = generate_trace(rng, index) if kind == "word" else generate_arith_trace(rng, index)
    trace_id = trace_id_for(seed, index) if kind == "word" else _stream_trace_id(stream, seed, index)
    record["trace_id"] = trace_id
    version = schema_version_of(record)
    if breakage is None:
        return GeneratedEvent(trace_id, record, None, None, version)
    if breakage in PAYLOAD_KINDS:
        payload = break_payload(rng, record, breakage)
        return GeneratedEvent(trace_id, None, payload, breakage.value, None, source_record=record)
    return GeneratedEvent(trace_id, break_record(rng, record, breakage), None, breakage.value, version)


def generate_events(
    count: int, seed: int, broken_share: float = 0.05, kind: str = "word"
) -> Iterator[GeneratedEvent]:
    """``count`` events of stream ``seed``, about ``broken_share`` of them broken.

    ``kind`` is ``"word"`` (the multi-step word problems, ~2 KB) or ``"arith"``
    (short column-arithmetic traces for training). Lazy: events are built as
    they are consumed.
    """
    if not 0.0 <= broken_share <= 1.0:
        raise ValueError(f"broken_share must be between 0 and 1, got {broken_share}")
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TRACE_KINDS)}, got {kind!r}")
    for index in range(count):
        yield generate_event(seed, index, broken_share, kind)


# --- JSON lines -------------------------------------------------------------------
