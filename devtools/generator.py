"""Deterministic synthetic reasoning traces: demos, tests, benchmarks.

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

JSONL (``write_jsonl``, behind ``tracestream generate``): record events,
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

import gzip
import hashlib
import io
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.producer import DeliveryReport, TraceProducer

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
"""created_at of event 0; event ``index`` is ``index`` seconds later."""

TRACE_VERSION = 1
SOURCES = ("gsm-synth", "tutor-bot", "agent-v2", "human-annotated")
MODELS = (
    "qwen2.5-7b-instruct",
    "llama-3.1-8b-instruct",
    "mistral-7b-instruct-v0.3",
    "tracestream-bytelm-small",
)
STEP_TYPES = ("restate", "plan", "calculate", "check", "conclude")
GENERATOR_TAG = "tracestream-synth/1"
TRACE_KINDS = ("word", "arith")
"""``word``: the multi-step word problems below (the default); ``arith``: short column arithmetic."""
ARITH_SOURCE = "arith-synth"
ARITH_GENERATOR_TAG = "tracestream-arith/1"


class Breakage(StrEnum):
    """Kinds of deliberately broken events; each value is the expected dead-letter reason."""

    NO_STEPS = "no_steps"
    DUPLICATE_STEP_INDEX = "duplicate_step_index"
    STEP_TOO_LONG = "step_too_long"
    PROMPT_TOO_LONG = "prompt_too_long"
    TOO_MANY_STEPS = "too_many_steps"
    EVENT_TOO_LARGE = "event_too_large"
    NOT_AVRO = "not_avro"
    UNKNOWN_SCHEMA = "unknown_schema"
    CORRUPT_AVRO = "corrupt_avro"


PAYLOAD_KINDS = frozenset({Breakage.NOT_AVRO, Breakage.UNKNOWN_SCHEMA, Breakage.CORRUPT_AVRO})
"""Kinds delivered as raw bytes (``GeneratedEvent.payload``); the rest are records."""

# Relative weights among broken events. event_too_large is ~1.15 MB each, so it is rare.
BREAKAGE_WEIGHTS: dict[Breakage, float] = {
    Breakage.NO_STEPS: 1.0,
    Breakage.DUPLICATE_STEP_INDEX: 1.0,
    Breakage.STEP_TOO_LONG: 1.0,
    Breakage.PROMPT_TOO_LONG: 0.5,
    Breakage.TOO_MANY_STEPS: 0.5,
    Breakage.EVENT_TOO_LARGE: 0.05,
    Breakage.NOT_AVRO: 1.0,
    Breakage.UNKNOWN_SCHEMA: 1.0,
    Breakage.CORRUPT_AVRO: 1.0,
}
_KINDS = tuple(BREAKAGE_WEIGHTS)
_CUM_WEIGHTS = tuple(
    sum(BREAKAGE_WEIGHTS[k] for k in _KINDS[: n + 1]) for n in range(len(_KINDS))
)

# Limits the broken events are built to cross (mirrors schemas.validation).
_MAX_STEP_CHARS = 20_000
_MAX_PROMPT_CHARS = 50_000
_MAX_STEPS = 1000
_MAX_EVENT_BYTES = 1_048_576


@dataclass(frozen=True)
class GeneratedEvent:
    """One event to publish: a ``record`` to encode, or a raw ``payload``.

    ``expected_reason`` is None for a valid trace, else the dead-letter reason.
    ``schema_version`` is set for records (1 or 2) and None for payloads.
    """

    trace_id: str | None
    record: dict | None
    payload: bytes | None
    expected_reason: str | None
    schema_version: int | None
    source_record: dict | None = field(default=None, compare=False, repr=False)
    """For payload breakages: the well-formed trace the bytes were made from (JSONL uses it)."""


# --- numbers ------------------------------------------------------------------

D = Decimal


def fmt(value: Decimal | int) -> str:
    """A number the way answers and calculations write it: 42, 23.4, 7.25."""
    d = D(value)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def money(value: Decimal) -> str:
    return f"${D(value):,.2f}"


def _cents(rng: random.Random, lo: str, hi: str, step: int = 5) -> Decimal:
    """A price between lo and hi dollars, in multiples of ``step`` cents."""
    a, b = int(D(lo) * 100) // step, int(D(hi) * 100) // step
    return D(rng.randint(a, b) * step) / 100


def _exact(value: Decimal, places: int = 2) -> bool:
    return value == value.quantize(D(1).scaleb(-places))


# --- text pieces -----------------------------------------------------------------

_PEOPLE = (
    ("Maya", "she", "her"), ("Liam", "he", "his"), ("Priya", "she", "her"),
    ("Carlos", "he", "his"), ("Aisha", "she", "her"), ("Tom", "he", "his"),
    ("Mei", "she", "her"), ("Jonas", "he", "his"), ("Fatima", "she", "her"),
    ("Noah", "he", "his"), ("Elena", "she", "her"), ("Kofi", "he", "his"),
    ("Sofia", "she", "her"), ("Arjun", "he", "his"), ("Hannah", "she", "her"),
    ("Diego", "he", "his"),
)
_STORES = ("the corner market", "a hardware store", "the school supply shop",
           "a farmers' market stall", "an online store", "the campus bookstore")
_GOODS = (  # singular, plural, cheapest, dearest
    ("notebook", "notebooks", "1.25", "4.50"),
    ("pen", "pens", "0.45", "2.20"),
    ("apple", "apples", "0.35", "0.95"),
    ("loaf of bread", "loaves of bread", "2.10", "4.80"),
    ("bag of rice", "bags of rice", "3.40", "9.90"),
    ("carton of milk", "cartons of milk", "1.15", "2.95"),
    ("pack of batteries", "packs of batteries", "3.99", "8.49"),
    ("T-shirt", "T-shirts", "6.50", "18.00"),
    ("pair of socks", "pairs of socks", "2.25", "6.75"),
    ("jar of honey", "jars of honey", "4.20", "11.60"),
    ("box of pencils", "boxes of pencils", "1.80", "5.40"),
    ("bottle of olive oil", "bottles of olive oil", "5.60", "14.90"),
)
_DISHES = ("a margherita pizza", "a bowl of ramen", "a Caesar salad", "grilled salmon",
           "a veggie burger", "pad thai", "a plate of dumplings", "lentil soup",
           "fish tacos", "a mushroom risotto", "chicken curry", "a cheese board")


def _person(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(_PEOPLE)


def _pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class _Problem:
    topic: str
    prompt: str
    answer: Decimal
    unit: str
    restate: str
    plan: str
    calcs: list[str]
    check: str | None
    extra_meta: dict[str, str] = field(default_factory=dict)


# --- problem builders ---------------------------------------------------------------


def _shopping(rng: random.Random) -> _Problem:
    name, she, her = _person(rng)
    store = rng.choice(_STORES)
    k = rng.randint(2, 5)
    goods = rng.sample(_GOODS, k)
    lines = []
    for sing, plur, lo, hi in goods:
        q = rng.randint(1, 12)
        p = _cents(rng, lo, hi)
        lines.append((q, sing if q == 1 else plur, plur, p, q * p))
    sub = sum((c for *_, c in lines), D(0))
    pct = None
    if rng.random() < 0.55:
        options = [x for x in (10, 15, 20, 25, 30, 50) if _exact(sub * x / 100)]
        if options:
            pct = rng.choice(options)
    bought = _join([f"{q} {what} at {money(p)} each" for q, what, _, p, _ in lines])
    prompt = (
        f"{name} is shopping at {store} to restock for the new month. {she.capitalize()} buys "
        f"{bought}. Prices are listed per item and there is no sales tax on these goods. "
    )
    if pct is not None:
        prompt += (f"At the register a coupon takes {pct}% off the whole subtotal. ")
    prompt += f"How much does {name} pay in total, in dollars?"
    calcs = [
        f"Cost of the {plur}: {name} buys {q} {what} at {money(p)} each, so I multiply the "
        f"quantity by the unit price: {q} × {fmt(p)} = {fmt(c)}. That is {money(c)} for the {plur}."
        for q, what, plur, p, c in lines
    ]
    calcs.append(
        f"Now add the cost of each kind of item to get the subtotal: "
        f"{' + '.join(fmt(c) for *_, c in lines)} = {fmt(sub)}. "
        f"The subtotal before any discount is {money(sub)}."
    )
    total = sub
    if pct is not None:
        off = sub * pct / 100
        total = sub - off
        calcs.append(
            f"The coupon takes {pct}% off the subtotal, so the discount is the subtotal times "
            f"{pct} divided by 100: {fmt(sub)} × {pct} ÷ 100 = {fmt(off)}. "
            f"That removes {money(off)} from the bill."
        )
        calcs.append(
            f"Subtract the discount from the subtotal: {fmt(sub)} − {fmt(off)} = {fmt(total)}. "
            f"After the coupon {name} owes {money(total)}."
        )
    restate = (
        f"{name} buys {k} different kinds of items: "
        + _join([f"{q} {what} at {money(p)}" for q, what, _, p, _ in lines])
        + (f", and a coupon takes {pct}% off the subtotal" if pct else "")
        + ". The question asks for the total amount paid, in dollars."
    )
    plan = (
        "I will compute the cost of each kind of item as quantity times unit price, add those "
        "costs to get the subtotal"
        + (f", then take {pct}% of the subtotal off" if pct else "")
        + ". Then I will re-add the costs in a different order to check the sum."
    )
    check = (
        f"Check: adding the item costs in reverse order gives "
        f"{' + '.join(fmt(c) for *_, c in reversed(lines))} = {fmt(sub)}, the same subtotal"
        + (f", and {money(total)} is less than {money(sub)} as a discount should make it." if pct
           else ". No discount applies, so the subtotal is what is paid.")
    )
    return _Problem("shopping", prompt, total, "dollars", restate, plan, calcs, check)


_VEHICLES = (  # who, verb, lowest and highest speed in km/h
    ("a cyclist", "rides", 12, 30),
    ("a freight train", "travels", 50, 120),
    ("a delivery van", "drives", 40, 90),
    ("a hiker", "walks", 3, 6),
    ("a ferry", "sails", 18, 40),
)


def _rates(rng: random.Random) -> _Problem:
    who, verb, lo, hi = rng.choice(_VEHICLES)
    ask_avg = rng.random() < 0.45
    n = rng.randint(2, 3 if ask_avg else 4)
    legs = []
    minute_legs = 0
    for _ in range(n):
        speed = rng.randint(lo, hi)
        if minute_legs < 2 and rng.random() < 0.3:
            minutes = rng.choice((15, 30, 45, 90, 75, 105))
            hours = D(minutes) / 60
            legs.append((speed, hours, minutes))
            minute_legs += 1
        else:
            hours = D(rng.choice(("0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "5", "6")))
            legs.append((speed, hours, None))
    dist = [s * h for s, h, _ in legs]
    total = sum(dist, D(0))
    ttime = sum((h for _, h, _ in legs), D(0))
    if ask_avg and not _exact(total / ttime):
        ask_avg = False
    def leg_text(s: int, h: Decimal, m: int | None) -> str:
        return f"{m} minutes at {s} km/h" if m else f"{fmt(h)} hours at {s} km/h"
    legs_text = _join([leg_text(*leg) for leg in legs])
    question = ("What is the average speed over the whole trip, in km/h?" if ask_avg
                else "How many kilometers does it cover in total?")
    prompt = (
        f"On a long day {who} {verb} in {n} stretches with short stops in between: "
        f"{legs_text}. Assume each stretch is at a constant speed and the stops add no "
        f"distance. {question}"
    )
    calcs = []
    for idx, (s, h, m) in enumerate(legs, 1):
        if m:
            calcs.append(
                f"Stretch {idx} is given in minutes, so convert it to hours by dividing by 60: "
                f"{m} ÷ 60 = {fmt(h)}. That stretch lasts {fmt(h)} hours."
            )
    for idx, (s, h, m) in enumerate(legs, 1):
        calcs.append(
            f"Distance of stretch {idx}: distance is speed times time, so "
            f"{s} × {fmt(h)} = {fmt(s * h)}. That stretch covers {fmt(s * h)} km."
        )
    calcs.append(
        f"Add the distances of all {n} stretches: {' + '.join(fmt(d) for d in dist)} = "
        f"{fmt(total)}. The whole trip is {fmt(total)} km."
    )
    answer = total
    unit = "km"
    if ask_avg:
        answer = total / ttime
        unit = "km/h"
        calcs.append(
            f"Total time moving: {' + '.join(fmt(h) for _, h, _ in legs)} = {fmt(ttime)} hours."
        )
        calcs.append(
            f"Average speed is total distance divided by total time: {fmt(total)} ÷ "
            f"{fmt(ttime)} = {fmt(answer)}. The average speed is {fmt(answer)} km/h."
        )
    restate = (
        f"The trip has {n} stretches: {legs_text}. "
        + ("I need the average speed over the whole trip." if ask_avg
           else "I need the total distance in kilometers.")
    )
    plan = (
        "Distance equals speed times time for each stretch. I will convert any minutes to "
        "hours, find each stretch's distance, and add them"
        + (", then divide the total distance by the total time." if ask_avg else ".")
    )
    lo_speed = min(s for s, _, _ in legs)
    hi_speed = max(s for s, _, _ in legs)
    check = (
        f"Check: at the slowest speed the trip would be {lo_speed} × {fmt(ttime)} = "
        f"{fmt(lo_speed * ttime)} km and at the fastest {hi_speed} × {fmt(ttime)} = "
        f"{fmt(hi_speed * ttime)} km; {fmt(total)} km lies between them, so the sum is plausible."
    )
    return _Problem("distance_rate", prompt, answer, unit, restate, plan, calcs, check)


def _bill_split(rng: random.Random) -> _Problem:
    name, she, her = _person(rng)
    n_people = rng.randint(2, 6)
    tip = rng.choice((10, 15, 18, 20, 25))
    dishes = rng.sample(_DISHES, rng.randint(2, 4))
    prices = [_cents(rng, "7.50", "24.00") for _ in dishes]
    for _ in range(2000):
        base = sum(prices, D(0))
        tip_amt = base * tip / 100
        if _exact(tip_amt) and _exact((base + tip_amt) / n_people):
            break
        prices[-1] += D("0.05")
    else:  # pragma: no cover - the search always succeeds within $100
        raise AssertionError("no exact bill found")
    base = sum(prices, D(0))
    tip_amt = base * tip / 100
    total = base + tip_amt
    share = total / n_people
    ordered = _join([f"{d} for {money(p)}" for d, p in zip(dishes, prices)])
    prompt = (
        f"{name} and {n_people - 1} friend{'s' if n_people > 2 else ''} have dinner together. "
        f"They order {ordered}. They leave a {tip}% tip on the food total and split the whole "
        f"bill, tip included, equally among the {n_people} of them. How much does each person "
        f"pay, in dollars?"
    )
    calcs = [
        f"Food total: add the price of every dish: {' + '.join(fmt(p) for p in prices)} = "
        f"{fmt(base)}. The food comes to {money(base)}.",
        f"The tip is {tip}% of the food total: {fmt(base)} × {tip} ÷ 100 = {fmt(tip_amt)}. "
        f"The tip is {money(tip_amt)}.",
        f"Whole bill including the tip: {fmt(base)} + {fmt(tip_amt)} = {fmt(total)}. "
        f"The table owes {money(total)}.",
        f"Split it equally among {n_people} people: {fmt(total)} ÷ {n_people} = {fmt(share)}. "
        f"Each person pays {money(share)}.",
    ]
    restate = (
        f"There are {n_people} people, {len(dishes)} dishes ({ordered}), a {tip}% tip on the "
        f"food total, and the bill is split evenly. I need one person's share."
    )
    plan = (
        "Add the dish prices, compute the tip as a percentage of that food total, add the tip "
        "to get the whole bill, then divide by the number of people."
    )
    check = (
        f"Check: {n_people} shares of {money(share)} give back the whole bill: "
        f"{fmt(share)} × {n_people} = {fmt(total)}, which matches."
    )
    return _Problem("bill_split", prompt, share, "dollars", restate, plan, calcs, check,
                    {"people": str(n_people)})


def _unit_conversion(rng: random.Random) -> _Problem:
    name, she, her = _person(rng)
    variant = rng.randrange(4)
    if variant == 0:
        lap = rng.choice((200, 250, 400))
        laps = rng.randint(3, 16)
        days = rng.randint(2, 7)
        per_day = lap * laps
        meters = per_day * days
        km = D(meters) / 1000
        prompt = (
            f"{name} trains on a {lap}-meter track. {she.capitalize()} runs {laps} laps every "
            f"day for {days} days before a race. How many kilometers does {she} run in total?"
        )
        calcs = [
            f"Meters per day: {laps} laps of {lap} meters is {laps} × {lap} = {per_day} meters.",
            f"Meters over all {days} days: {per_day} × {days} = {meters} meters.",
            f"Convert meters to kilometers by dividing by 1000: {meters} ÷ 1000 = {fmt(km)}. "
            f"That is {fmt(km)} km.",
        ]
        restate = (f"{laps} laps of a {lap} m track each day, for {days} days; the answer must "
                   "be in kilometers, not meters.")
        plan = "Find meters per day, multiply by the number of days, then convert meters to kilometers (1 km = 1000 m)."
        check = (f"Check: per day that is {per_day} ÷ 1000 = {fmt(D(per_day) / 1000)} km, and "
                 f"{fmt(D(per_day) / 1000)} × {days} = {fmt(km)} km, the same total.")
        return _Problem("unit_conversion", prompt, km, "km", restate, plan, calcs, check)
    if variant == 1:
        grams = rng.choice((125, 150, 200, 225, 250, 300, 375, 450, 500))
        batches = rng.randint(2, 24)
        total_g = grams * batches
        kg = D(total_g) / 1000
        prompt = (
            f"A bakery recipe for one batch of bread rolls uses {grams} grams of flour. "
            f"{name} bakes {batches} batches for a school fair. How many kilograms of flour "
            f"does {she} need?"
        )
        calcs = [
            f"Flour for all batches: {batches} batches × {grams} grams = {total_g} grams, "
            f"written as {batches} × {grams} = {total_g}.",
            f"Convert grams to kilograms by dividing by 1000: {total_g} ÷ 1000 = {fmt(kg)}. "
            f"{name} needs {fmt(kg)} kg of flour.",
        ]
        restate = f"Each batch takes {grams} g of flour and there are {batches} batches; the answer is in kilograms."
        plan = "Multiply grams per batch by the number of batches, then divide by 1000 to get kilograms."
        check = (f"Check: {fmt(kg)} kg is {fmt(kg)} × 1000 = {total_g} grams, and "
                 f"{total_g} ÷ {batches} = {grams} grams per batch, as given.")
        return _Problem("unit_conversion", prompt, kg, "kg", restate, plan, calcs, check)
    if variant == 2:
        minutes = rng.choice((15, 30, 45, 60, 75, 90, 105, 120))
        per_week = rng.randint(2, 6)
        weeks = rng.randint(3, 12)
        sessions = per_week * weeks
        total_min = minutes * sessions
        hours = D(total_min) / 60
        prompt = (
            f"{name} practices piano for {minutes} minutes per session, {per_week} sessions a "
            f"week, for {weeks} weeks before a recital. How many hours does {she} practice in "
            f"total?"
        )
        calcs = [
            f"Number of sessions: {per_week} per week for {weeks} weeks is {per_week} × {weeks} = "
            f"{sessions} sessions.",
            f"Total minutes: {sessions} sessions of {minutes} minutes is {sessions} × {minutes} = "
            f"{total_min} minutes.",
            f"Convert minutes to hours by dividing by 60: {total_min} ÷ 60 = {fmt(hours)}. "
            f"That is {fmt(hours)} hours of practice.",
        ]
        restate = f"{minutes}-minute sessions, {per_week} a week, for {weeks} weeks; the answer is in hours."
        plan = "Count the sessions, multiply by the minutes per session, then divide by 60 to get hours."
        check = (f"Check: one week is {per_week} × {minutes} = {per_week * minutes} minutes, "
                 f"and {per_week * minutes} × {weeks} = {total_min} minutes, the same total.")
        return _Problem("unit_conversion", prompt, hours, "hours", restate, plan, calcs, check)
    size = rng.choice((250, 330, 500, 750))
    bottles = rng.randint(6, 48)
    total_ml = size * bottles
    liters = D(total_ml) / 1000
    prompt = (
        f"For a community picnic {name} brings {bottles} bottles of juice, each holding "
        f"{size} milliliters. How many liters of juice is that altogether?"
    )
    calcs = [
        f"Total volume in milliliters: {bottles} bottles of {size} ml is {bottles} × {size} = "
        f"{total_ml} ml.",
        f"Convert milliliters to liters by dividing by 1000: {total_ml} ÷ 1000 = {fmt(liters)}. "
        f"That is {fmt(liters)} liters.",
    ]
    restate = f"{bottles} bottles of {size} ml each; the question wants liters."
    plan = "Multiply to get milliliters, then divide by 1000 because 1 liter is 1000 ml."
    check = (f"Check: each bottle is {size} ÷ 1000 = {fmt(D(size) / 1000)} liters and "
             f"{fmt(D(size) / 1000)} × {bottles} = {fmt(liters)} liters, which agrees.")
    return _Problem("unit_conversion", prompt, liters, "liters", restate, plan, calcs, check)


def _percentages(rng: random.Random) -> _Problem:
    name, she, her = _person(rng)
    if rng.random() < 0.5:
        for _ in range(50):
            cost = _cents(rng, "8", "120", 100)
            markup = rng.choice((20, 25, 40, 50, 60))
            sale = rng.choice((10, 15, 20, 25, 30))
            up = cost * markup / 100
            price = cost + up
            off = price * sale / 100
            final = price - off
            if _exact(up) and _exact(off):
                break
        item = rng.choice(("a desk lamp", "a backpack", "a pair of headphones", "a board game",
                           "a rain jacket", "a coffee grinder"))
        prompt = (
            f"{name} runs a small shop. {she.capitalize()} buys {item} from a supplier for "
            f"{money(cost)} and marks the price up by {markup}%. Later the item goes on sale "
            f"at {sale}% off the marked price. What is the sale price, in dollars?"
        )
        calcs = [
            f"The markup is {markup}% of the cost: {fmt(cost)} × {markup} ÷ 100 = {fmt(up)}. "
            f"So the markup adds {money(up)}.",
            f"Marked price: cost plus markup, {fmt(cost)} + {fmt(up)} = {fmt(price)}. "
            f"The shelf price is {money(price)}.",
            f"The sale takes {sale}% off the marked price: {fmt(price)} × {sale} ÷ 100 = "
            f"{fmt(off)}. The reduction is {money(off)}.",
            f"Sale price: {fmt(price)} − {fmt(off)} = {fmt(final)}. "
            f"The item sells for {money(final)}.",
        ]
        restate = (f"Cost {money(cost)}, marked up {markup}%, then {sale}% off the marked price. "
                   "I need the final sale price, not the profit.")
        plan = ("Apply the markup to the cost first, then apply the sale percentage to the marked "
                "price (not to the cost), and subtract.")
        check = (f"Check: a {markup}% markup followed by {sale}% off is not the same as "
                 f"{markup - sale}% overall, so the steps must be done in order; "
                 f"{fmt(final)} − {fmt(cost)} = {fmt(final - cost) if final >= cost else '0'} "
                 f"shows the sale price is still {'above' if final > cost else 'not above'} cost."
                 if final >= cost else
                 f"Check: the sale price {money(final)} is below the cost {money(cost)}, which can "
                 f"happen when the sale percentage is large; the steps were applied in order.")
        return _Problem("percentages", prompt, final, "dollars", restate, plan, calcs, check)
    passed_pct = rng.choice((40, 50, 60, 75, 80, 90))
    a_pct = rng.choice((10, 20, 25, 50))
    # Students = a multiple of the smallest class size that keeps both counts whole.
    for _ in range(200):
        students = rng.randint(8, 60) * 4
        passed = D(students) * passed_pct / 100
        got_a = passed * a_pct / 100
        if passed == int(passed) and got_a == int(got_a):
            break
    else:
        students, passed_pct, a_pct = 200, 50, 10
        passed, got_a = D(100), D(10)
    prompt = (
        f"{students} students at {name}'s school take a regional math exam. {passed_pct}% of "
        f"them pass, and of the students who pass, {a_pct}% earn an A. How many students earn "
        f"an A?"
    )
    calcs = [
        f"Students who pass: {passed_pct}% of {students} is {students} × {passed_pct} ÷ 100 = "
        f"{fmt(passed)}. So {fmt(passed)} students pass.",
        f"Students with an A: {a_pct}% of those {fmt(passed)} is {fmt(passed)} × {a_pct} ÷ 100 = "
        f"{fmt(got_a)}. So {fmt(got_a)} students earn an A.",
    ]
    restate = (f"{students} students, {passed_pct}% pass, and {a_pct}% of the passing students "
               "get an A. The A percentage applies to the passers, not to everyone.")
    plan = "Find the number who pass, then take the A percentage of that number."
    check = (f"Check: as a share of everyone that is {passed_pct} × {a_pct} ÷ 100 = "
             f"{fmt(D(passed_pct * a_pct) / 100)} percent, and {students} × "
             f"{fmt(D(passed_pct * a_pct) / 100)} ÷ 100 = {fmt(got_a)}, the same count.")
    return _Problem("percentages", prompt, got_a, "students", restate, plan, calcs, check)


def _work_rate(rng: random.Random) -> _Problem:
    machines = rng.randint(2, 9)
    rate = rng.randint(4, 30) * 5
    hours = rng.choice((6, 8, 10, 12, 16))
    days = rng.randint(2, 7)
    per_hour = machines * rate
    per_day = per_hour * hours
    total = per_day * days
    product = rng.choice(("bottle caps", "circuit boards", "ceramic tiles", "paper cups",
                          "bike chains", "glass jars"))
    defect = None
    options = [p for p in (1, 2, 4, 5) if (total * p) % 100 == 0]
    if options and rng.random() < 0.7:
        defect = rng.choice(options)
    prompt = (
        f"A factory line has {machines} identical machines making {product}. Each machine makes "
        f"{rate} {product} per hour, and the line runs {hours} hours a day for {days} days. "
    )
    if defect:
        prompt += (f"Quality control rejects {defect}% of everything made. How many good "
                   f"{product} does the line produce?")
    else:
        prompt += f"How many {product} does the line produce in total?"
    calcs = [
        f"Output per hour for the whole line: {machines} machines × {rate} per hour = "
        f"{per_hour}, written {machines} × {rate} = {per_hour}.",
        f"Output per day: {per_hour} per hour for {hours} hours is {per_hour} × {hours} = {per_day}.",
        f"Output over {days} days: {per_day} × {days} = {total} {product}.",
    ]
    answer = D(total)
    if defect:
        bad = total * defect // 100
        answer = D(total - bad)
        calcs.append(f"Rejected items: {defect}% of {total} is {total} × {defect} ÷ 100 = {bad}.")
        calcs.append(f"Good items: {total} − {bad} = {total - bad} {product} pass quality control.")
    restate = (f"{machines} machines at {rate} per hour each, {hours} hours a day, {days} days"
               + (f", with {defect}% rejected" if defect else "") + ".")
    plan = ("Multiply machines by the hourly rate, then by hours per day and by days"
            + (", then remove the rejected percentage." if defect else "."))
    check = (f"Check: one machine makes {rate} × {hours} × {days} = {rate * hours * days} items, "
             f"and {rate * hours * days} × {machines} = {total}, the same total before any rejects.")
    return _Problem("work_rate", prompt, answer, product, restate, plan, calcs, check)


def _savings(rng: random.Random) -> _Problem:
    name, she, her = _person(rng)
    start = _cents(rng, "10", "150", 500)
    weekly = _cents(rng, "5", "40", 25)
    weeks = rng.randint(4, 20)
    item = rng.choice(("a bicycle", "a used guitar", "a tablet", "concert tickets",
                       "a pair of running shoes", "a telescope"))
    saved = weekly * weeks
    have = start + saved
    price = _cents(rng, "20", str(int(have)), 100) if have > 25 else D(20)
    if price > have:
        price = have
    left = have - price
    prompt = (
        f"{name} has {money(start)} in a savings jar. {she.capitalize()} adds {money(weekly)} "
        f"every week for {weeks} weeks, then spends {money(price)} on {item}. How much money is "
        f"left in the jar, in dollars?"
    )
    calcs = [
        f"Money added over the weeks: {money(weekly)} per week for {weeks} weeks is "
        f"{fmt(weekly)} × {weeks} = {fmt(saved)}.",
        f"Money in the jar before the purchase: {fmt(start)} + {fmt(saved)} = {fmt(have)}.",
        f"Money left after buying {item}: {fmt(have)} − {fmt(price)} = {fmt(left)}.",
    ]
    restate = (f"Start with {money(start)}, add {money(weekly)} a week for {weeks} weeks, then "
               f"spend {money(price)}. I need what remains.")
    plan = "Compute the weekly savings total, add the starting amount, then subtract the purchase."
    check = (f"Check: {fmt(left)} + {fmt(price)} = {fmt(have)}, which is the amount before the "
             "purchase, so the subtraction is right.")
    return _Problem("savings", prompt, left, "dollars", restate, plan, calcs, check)


_BUILDERS = (
    (_shopping, 3), (_rates, 2), (_bill_split, 2), (_unit_conversion, 2),
    (_percentages, 2), (_work_rate, 1), (_savings, 1),
)
_BUILDER_FUNCS = tuple(b for b, _ in _BUILDERS)
_BUILDER_WEIGHTS = tuple(w for _, w in _BUILDERS)


# --- traces -------------------------------------------------------------------------


def trace_id_for(seed: int, index: int) -> str:
    """The trace id of event ``index`` of stream ``seed`` (a UUID-formatted hash)."""
    digest = hashlib.sha256(f"tracestream-generate:{seed}:{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


_COMMENTARY = {
    "shopping": (
        "Keeping each item's cost separate makes a wrong price easy to spot later.",
        "I keep the cents exact here instead of rounding, since the total must be exact.",
        "This matches the quantity and the price stated in the problem.",
        "Working item by item avoids mixing up which price goes with which quantity.",
    ),
    "distance_rate": (
        "The units work out: kilometers per hour times hours leaves kilometers.",
        "Each stretch is independent, so its distance does not depend on the others.",
        "Hours must be decimal hours here, not hours and minutes, before multiplying.",
        "The stops add time but no distance, so they do not enter this step.",
    ),
    "bill_split": (
        "The tip applies to the food total only, as the problem says.",
        "All amounts stay in dollars and cents, so the result must be exact to the cent.",
        "Splitting happens last, after the tip, because the tip is shared too.",
        "This keeps the order of operations the problem describes.",
    ),
    "unit_conversion": (
        "The conversion factor is exact, so no rounding is needed.",
        "I convert only at the end so the intermediate counts stay whole numbers.",
        "Units: the count times the size per item gives the size in the small unit.",
        "Dividing by the factor moves from the small unit to the large unit.",
    ),
    "percentages": (
        "A percentage is a number out of 100, so multiplying by it and dividing by 100 gives the part.",
        "The percentage is applied to the right base, as the problem specifies.",
        "Doing the two percentage changes in sequence matters; they do not simply add.",
        "The result is a whole amount, which makes sense for what is being counted.",
    ),
    "work_rate": (
        "All machines are identical, so the line rate is the single-machine rate times the count.",
        "Rates multiply by time to give amounts: items per hour times hours gives items.",
        "The count stays a whole number, as it should for physical items.",
        "Rejected items are removed only after the full production count is known.",
    ),
    "savings": (
        "Weekly deposits are all the same size, so multiplication replaces repeated addition.",
        "The starting amount is added once, not every week.",
        "The purchase happens after all the saving, so it is subtracted last.",
        "Amounts stay in dollars and cents throughout.",
    ),
}

_PREAMBLES = {
    "gsm-synth": (
        "Solve the following grade-school math word problem. ",
        "Read the problem carefully and solve it. ",
        "Here is a multi-step arithmetic problem. ",
    ),
    "tutor-bot": (
        "You are a patient math tutor helping a student with homework. Explain your reasoning "
        "in short steps, name every quantity you use, and check the result before answering.\n",
        "Tutoring session. The student is practicing multi-step word problems and often mixes "
        "up units, so be explicit about units at every step.\n",
    ),
    "agent-v2": (
        "System: you are a reasoning agent with access to a calculator tool. Restate the task, "
        "plan, compute each quantity in its own step, verify, and conclude.\n",
        "System: solve the task below. Use one step per arithmetic operation, keep exact "
        "decimals, and do not round intermediate results.\n",
    ),
    "human-annotated": (
        "",
        "Problem from the annotation queue (arithmetic, multi-step). ",
    ),
}


def _prompt_for(rng: random.Random, source: str, problem: _Problem) -> str:
    pre = rng.choice(_PREAMBLES[source])
    if source == "tutor-bot":
        return (f"{pre}Student question (grade {rng.randint(5, 9)}): {problem.prompt} Please "
                "explain each step so I can follow along.")
    if source == "agent-v2":
        return (f"{pre}Task: {problem.prompt}\nWrite each arithmetic operation explicitly and end "
                "with 'Final answer: <number>'.")
    if source == "human-annotated":
        return pre + problem.prompt
    return f"{pre}{problem.prompt} Give the answer as a number."


def generate_trace(rng: random.Random, index: int) -> dict:
    """One valid trace record drawn from ``rng``; ``created_at`` is ``BASE_TIME + index`` s.

    Has a ``model`` key (schema v2) or not (schema v1). The trace id comes
    from ``rng``; ``generate_events`` replaces it with ``trace_id_for(seed, index)``.
    """
    builder = rng.choices(_BUILDER_FUNCS, weights=_BUILDER_WEIGHTS)[0]
    problem = builder(rng)
    source = rng.choice(SOURCES)
    answer = fmt(problem.answer)
    steps: list[tuple[str, str]] = []
    if rng.random() < 0.8:
        steps.append(("restate", problem.restate))
    steps.append(("plan", problem.plan))
    notes = _COMMENTARY[problem.topic]
    for c in problem.calcs:
        picked = rng.sample(notes, 2 if rng.random() < 0.35 else 1)
        c = " ".join([c, *picked])
        steps.append(("calculate", c))
    if problem.check and rng.random() < 0.75:
        steps.append(("check", problem.check))
    steps.append(("conclude", _pick(
        rng,
        f"All the quantities have been used and the check agrees, so the answer is {answer} "
        f"{problem.unit}. Final answer: {answer}",
        f"Putting the steps together, the result the question asks for is {answer} "
        f"{problem.unit}. Final answer: {answer}",
        f"Therefore the answer to the question is {answer} ({problem.unit}), with no rounding "
        f"needed. Final answer: {answer}",
    )))
    while len(steps) > 12:  # keep 3..12 steps: drop restate, then check
        drop = next((k for k, (t, _) in enumerate(steps) if t in ("restate", "check")), None)
        if drop is None:
            break
        del steps[drop]
    n = len(steps)
    difficulty = "easy" if n <= 5 else "medium" if n <= 8 else "hard"
    meta = {"difficulty": difficulty, "topic": problem.topic, "generator": GENERATOR_TAG,
            "lang": "en", **problem.extra_meta}
    if source == "agent-v2":
        meta["tools"] = "calculator"
    if source == "human-annotated":
        meta["annotator"] = f"ann-{rng.randint(1, 40):02d}"

    # Scores: graders for some sources, none for others.
    score: float | None
    if source == "human-annotated":
        score = rng.choice((1.0, 1.0, 0.75, 0.5))
    elif source == "agent-v2":
        score = round(rng.uniform(0.4, 1.0), 3)
    elif source == "tutor-bot":
        score = round(rng.uniform(0.2, 1.0), 3) if rng.random() < 0.5 else None
    else:
        score = None

    record: dict[str, Any] = {
        "trace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "trace_version": TRACE_VERSION,
        "prompt": _prompt_for(rng, source, problem),
        "steps": [{"i": k, "type": t, "content": c} for k, (t, c) in enumerate(steps)],
        "final_answer": answer,
        "meta": meta,
        "source": source,
        "created_at": BASE_TIME + timedelta(seconds=index),
        "score": score,
    }
    # Schema v2 adds ``model``: agents and tutors always use it, others sometimes.
    v2_share = {"agent-v2": 1.0, "tutor-bot": 0.7, "gsm-synth": 0.3, "human-annotated": 0.2}[source]
    if rng.random() < v2_share:
        record["model"] = None if source == "human-annotated" else rng.choice(MODELS)
    return record


# --- short arithmetic traces (kind "arith") ----------------------------------------


def generate_arith_trace(rng: random.Random, index: int) -> dict:
    """One short column-arithmetic trace: ``What is 37 + 48?`` worked digit by digit.

    Two-digit operands, ``+`` or ``-`` (never a negative result), ASCII so that
    every symbol is one byte-level token. Two steps: the ones column, then
    the tens column with its carry or borrow written out (0 included, so
    every trace has the same shape); the answer is the tens result followed
    by the ones digit (a leading 0 dropped). Rendered for SFT a whole example
    is at most 160 bytes, so a short ``max_len`` keeps ``<answer>`` in view.
    """
    op = rng.choice("+-")
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if op == "-" and a < b:
        a, b = b, a
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        ones = a0 + b0
        carry = ones // 10
        tens = a1 + b1 + carry
        answer = a + b
        steps = [f"ones: {a0} + {b0} = {ones}", f"tens: {a1} + {b1} + {carry} = {tens}"]
    else:
        carry = int(a0 < b0)
        ones = a0 + 10 * carry - b0
        tens = a1 - b1 - carry
        answer = a - b
        steps = [f"ones: {a0 + 10 * carry} - {b0} = {ones}", f"tens: {a1} - {b1} - {carry} = {tens}"]
    return {
        "trace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "trace_version": TRACE_VERSION,
        "prompt": f"What is {a} {op} {b}?",
        "steps": [{"i": i, "type": "calculate", "content": c} for i, c in enumerate(steps)],
        "final_answer": str(answer),
        "meta": {"difficulty": "medium" if carry else "easy", "topic": "arithmetic",
                 "op": "add" if op == "+" else "subtract", "generator": ARITH_GENERATOR_TAG,
                 "lang": "en"},
        "source": ARITH_SOURCE,
        "created_at": BASE_TIME + timedelta(seconds=index),
        "score": None,
    }


def _stream_trace_id(stream: str, seed: int, index: int) -> str:
    digest = hashlib.sha256(f"{stream}-generate:{seed}:{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def schema_version_of(record: dict) -> int:
    """2 when the record has a ``model`` key, else 1."""
    return 2 if "model" in record else 1


# --- broken events ---------------------------------------------------------------


def _runaway_text(rng: random.Random, record: dict, length: int) -> str:
    """A step that loops re-checking the same arithmetic, ``length`` chars long."""
    calcs = [s["content"] for s in record["steps"] if s["type"] == "calculate"] or [record["prompt"]]
    parts: list[str] = []
    size = 0
    k = 1
    while size < length:
        piece = f"Re-check {k}: {rng.choice(calcs)} "
        parts.append(piece)
        size += len(piece)
        k += 1
    return "".join(parts)[:length]


def _break_record(rng: random.Random, record: dict, kind: Breakage) -> dict:
    rec = dict(record)
    steps = [dict(s) for s in record["steps"]]
    if kind is Breakage.NO_STEPS:
        rec["steps"] = []
    elif kind is Breakage.DUPLICATE_STEP_INDEX:
        k = rng.randrange(1, len(steps))
        steps[k]["i"] = steps[k - 1]["i"]
        rec["steps"] = steps
    elif kind is Breakage.STEP_TOO_LONG:
        k = rng.randrange(len(steps))
        steps[k]["content"] = _runaway_text(rng, record, rng.randint(20_500, 26_000))
        rec["steps"] = steps
    elif kind is Breakage.PROMPT_TOO_LONG:
        lines = []
        size = len(record["prompt"])
        n = 1
        while size <= _MAX_PROMPT_CHARS + 1000:
            sing, plur, lo, hi = rng.choice(_GOODS)
            line = f"Item {n:05d}: {plur}, {money(_cents(rng, lo, hi))} each\n"
            lines.append(line)
            size += len(line)
            n += 1
        rec["prompt"] = "Reference price list:\n" + "".join(lines) + "\n" + record["prompt"]
    elif kind is Breakage.TOO_MANY_STEPS:
        n = rng.randint(_MAX_STEPS + 1, _MAX_STEPS + 100)
        unit = D(rng.randint(25, 400)) / 100
        rec["steps"] = [steps[0]] + [
            {"i": k, "type": "calculate",
             "content": f"Counting item {k}: running total {k} × {fmt(unit)} = {fmt(k * unit)}."}
            for k in range(1, n)
        ]
    elif kind is Breakage.EVENT_TOO_LARGE:
        # Every field rule holds (≤ 1000 steps, each ≤ 20,000 chars), only the size does not.
        target = int(_MAX_EVENT_BYTES * 1.1)
        total = len(record["prompt"]) + sum(len(s["content"]) for s in steps)
        k = len(steps)
        while total < target:
            text = _runaway_text(rng, record, rng.randint(18_000, _MAX_STEP_CHARS - 100))
            steps.append({"i": k, "type": "check", "content": text})
            total += len(text)
            k += 1
        rec["steps"] = steps
    else:  # pragma: no cover
        raise ValueError(f"{kind} is not a record breakage")
    return rec


_UNREGISTERED_TRACE_V3 = {
    "type": "record",
    "name": "Trace",
    "namespace": "tracestream",
    "fields": [
        {"name": "trace_id", "type": "string"},
        {"name": "trace_version", "type": "int", "default": 1},
        {"name": "prompt", "type": "string"},
        {"name": "steps", "type": {"type": "array", "items": {
            "type": "record", "name": "Step", "fields": [
                {"name": "i", "type": "int"},
                {"name": "type", "type": "string"},
                {"name": "content", "type": "string"},
            ]}}},
        {"name": "final_answer", "type": "string"},
        {"name": "meta", "type": {"type": "map", "values": "string"}},
        {"name": "source", "type": "string"},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "score", "type": ["null", "double"], "default": None},
        {"name": "model", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    ],
}


@cache
def _unregistered_v3() -> tuple[bytes, Any]:
    import fastavro
    from fastavro.schema import to_parsing_canonical_form

    fp = bytes.fromhex(fastavro.schema.fingerprint(
        to_parsing_canonical_form(_UNREGISTERED_TRACE_V3), "CRC-64-AVRO"))
    return b"\xc3\x01" + fp, fastavro.parse_schema(_UNREGISTERED_TRACE_V3)


@cache
def _trace_codec() -> Any:
    from schemas.codec import AvroCodec
    from schemas.registry import default_registry

    return AvroCodec(default_registry())


def _break_payload(rng: random.Random, record: dict, kind: Breakage) -> bytes:
    if kind is Breakage.NOT_AVRO:
        text = json.dumps(record_to_json(record)).encode()
        return gzip.compress(text, mtime=0) if rng.random() < 0.3 else text
    if kind is Breakage.UNKNOWN_SCHEMA:
        from fastavro import schemaless_writer

        header, parsed = _unregistered_v3()
        out = io.BytesIO()
        out.write(header)
        schemaless_writer(out, parsed, {
            **record, "model": record.get("model"),
            "tags": [record["meta"]["topic"], record["meta"]["difficulty"]],
        })
        return out.getvalue()
    if kind is Breakage.CORRUPT_AVRO:
        good = _trace_codec().encode(record, "Trace", schema_version_of(record))
        if rng.random() < 0.7:  # truncated in transit
            return good[: rng.randint(12, len(good) - 1)]
        return good + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
    raise ValueError(f"{kind} is not a payload breakage")  # pragma: no cover


def _pick_kind(rng: random.Random) -> Breakage:
    return rng.choices(_KINDS, cum_weights=_CUM_WEIGHTS)[0]


def generate_event(seed: int, index: int, broken_share: float = 0.05, kind: str = "word") -> GeneratedEvent:
    """Event ``index`` of stream ``seed`` of trace kind ``kind``; depends on nothing else."""
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TRACE_KINDS)}, got {kind!r}")
    stream = "tracestream" if kind == "word" else f"tracestream-{kind}"
    rng = random.Random(f"{stream}:{seed}:{index}")
    broken = rng.random() < broken_share
    breakage = _pick_kind(rng) if broken else None
    record = generate_trace(rng, index) if kind == "word" else generate_arith_trace(rng, index)
    trace_id = trace_id_for(seed, index) if kind == "word" else _stream_trace_id(stream, seed, index)
    record["trace_id"] = trace_id
    version = schema_version_of(record)
    if breakage is None:
        return GeneratedEvent(trace_id, record, None, None, version)
    if breakage in PAYLOAD_KINDS:
        payload = _break_payload(rng, record, breakage)
        return GeneratedEvent(trace_id, None, payload, breakage.value, None, source_record=record)
    return GeneratedEvent(trace_id, _break_record(rng, record, breakage), None, breakage.value, version)


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


def record_to_json(record: dict) -> dict:
    """The plain JSON shape of a record (``created_at`` as ISO-8601)."""
    out = dict(record)
    created = out.get("created_at")
    if isinstance(created, datetime):
        out["created_at"] = created.isoformat().replace("+00:00", "Z")
    return out


@dataclass(frozen=True)
class JsonlWriteSummary:
    """What ``write_jsonl`` wrote and what should become of each line.

    ``publish_rejects``: lines ``publish`` refuses (reason → count);
    ``dead_letters``: lines that publish but the validator dead-letters.
    """

    lines: int
    valid: int
    publish_rejects: dict[str, int]
    dead_letters: dict[str, int]


def jsonl_line(event: GeneratedEvent) -> tuple[str, str | None, bool]:
    """One JSONL line for ``event``: (text without newline, expected reason, rejected at publish)."""
    if event.record is not None:
        line = json.dumps(record_to_json(event.record), ensure_ascii=False)
        return line, event.expected_reason, False
    # Payload breakages have no JSON form: use their JSON-level counterparts.
    if event.source_record is None:
        raise ValueError("a payload event without source_record has no JSONL form")
    rng = random.Random(f"tracestream-jsonl:{event.trace_id}")
    full = record_to_json(event.source_record)
    text = json.dumps(full, ensure_ascii=False)
    if event.expected_reason == Breakage.UNKNOWN_SCHEMA:
        other = {
            "id": full["trace_id"],
            "question": full["prompt"],
            "reasoning": [s["content"] for s in full["steps"]],
            "answer": full["final_answer"],
        }
        return json.dumps(other, ensure_ascii=False), "invalid_shape", True
    if event.expected_reason == Breakage.CORRUPT_AVRO:
        cut = text.index('", "', rng.randrange(len(text) // 3, len(text) // 2))
        return text[: cut + 1] + text[cut + 2 :], "not_json", True
    # not_avro: cut off inside the prompt string.
    start = text.index('"prompt": "') + len('"prompt": "')
    return text[: start + rng.randint(3, 40)], "not_json", True


def write_jsonl(events: Iterable[GeneratedEvent], fp: IO[str]) -> JsonlWriteSummary:
    """Write one JSON object per line (see the module doc for how breakages appear).

    ``fp`` is a text file opened with ``encoding="utf-8"`` (lines are not ASCII-escaped).
    """
    lines = valid = 0
    rejects: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for event in events:
        text, reason, rejected = jsonl_line(event)
        fp.write(text)
        fp.write("\n")
        lines += 1
        if reason is None:
            valid += 1
        elif rejected:
            rejects[reason] += 1
        else:
            dead[reason] += 1
    return JsonlWriteSummary(lines, valid, dict(rejects), dict(dead))


async def publish_generated(producer: TraceProducer, events: Iterable[GeneratedEvent]) -> DeliveryReport:
    """Publish events as they are meant to arrive: records at their schema version, payloads as bytes."""
    for event in events:
        if event.payload is not None:
            await producer.publish_bytes(event.payload, event.trace_id.encode() if event.trace_id else None)
        else:
            await producer.publish(event.record, schema_version=event.schema_version)
    return await producer.flush()
