"""Word-problem traces: shopping, rates, bills, units, percentages, work, savings.

Each builder draws a problem from its own ``random.Random`` and writes worked
steps whose ``calculate`` contents carry their arithmetic (``a op b = r``), so
a test can recompute every trace (see ``devtools.generator``).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from devtools.base import BASE_TIME, TRACE_VERSION

SOURCES = ("gsm-synth", "tutor-bot", "agent-v2", "human-annotated")
MODELS = (
    "qwen2.5-7b-instruct",
    "llama-3.1-8b-instruct",
    "mistral-7b-instruct-v0.3",
    "tracestream-bytelm-small",
)
STEP_TYPES = ("restate", "plan", "calculate", "check", "conclude")
GENERATOR_TAG = "tracestream-synth/1"


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


def cents(rng: random.Random, lo: str, hi: str, step: int = 5) -> Decimal:
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
GOODS = (  # singular, plural, cheapest, dearest
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
    goods = rng.sample(GOODS, k)
    lines = []
    for sing, plur, lo, hi in goods:
        q = rng.randint(1, 12)
        p = cents(rng, lo, hi)
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
    prices = [cents(rng, "7.50", "24.00") for _ in dishes]
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
            cost = cents(rng, "8", "120", 100)
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
    start = cents(rng, "10", "150", 500)
    weekly = cents(rng, "5", "40", 25)
    weeks = rng.randint(4, 20)
    item = rng.choice(("a bicycle", "a used guitar", "a tablet", "concert tickets",
                       "a pair of running shoes", "a telescope"))
    saved = weekly * weeks
    have = start + saved
    price = cents(rng, "20", str(int(have)), 100) if have > 25 else D(20)
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
