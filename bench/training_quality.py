"""Training quality on short arithmetic traces: eval exact match against a majority-answer baseline.

    python -m bench.training_quality [--count 3000] [--seed 11] [--eval-share 0.1]
        [--preset arith] [--steps N] [--set train.learning_rate=0.003 ...]

Generates ``--count`` arithmetic traces (``generate_events(kind="arith")``),
splits them as a dataset would (``schemas.dataset.Split`` by trace id), trains
the preset with ``trainer.loop.train_and_evaluate`` in this process on the CPU
(or whatever JAX finds), and prints the scorecard next to its baseline: the
commonest train answer given for every eval item. No broker is involved (the
integration test ``tests/integration/test_training_quality.py`` covers the
path through Kafka); this isolates what the model learns and what it costs.
Timings are wall clock and depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import emit_json, load_average, machine
from schemas.dataset import Split, TraceFilter, select
from streams.generator import generate_events
from trainer.config import from_mapping
from trainer.data import examples_from_records, tokenize
from trainer.evaluate import evaluate
from trainer.loop import train_and_evaluate


def _override(spec: str) -> tuple[str, str, Any]:
    key, _, value = spec.partition("=")
    section, _, field = key.partition(".")
    if section not in ("model", "train") or not field or not value:
        raise SystemExit(f"--set wants model.FIELD=VALUE or train.FIELD=VALUE, got {spec!r}")
    return section, field, json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="arithmetic traces generated")
    parser.add_argument("--seed", type=int, default=11, help="generator seed")
    parser.add_argument("--eval-share", type=float, default=0.1, help="share of traces in eval")
    parser.add_argument("--preset", default="arith")
    parser.add_argument("--steps", type=int, default=None, help="optimizer updates (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=JSON",
                        help="override one config field, e.g. train.learning_rate=0.002")
    args = parser.parse_args()

    config: dict[str, Any] = {"preset": args.preset, "model": {}, "train": {}}
    if args.steps is not None:
        config["train"]["total_steps"] = args.steps
    for spec in args.set:
        section, field, value = _override(spec)
        config[section][field] = value
    preset = from_mapping(config)

    records = [e.record for e in generate_events(args.count, args.seed, 0.0, kind="arith")]
    split: dict[str, list] = {"train": [], "eval": []}
    for name, record in select(records, TraceFilter(), Split(eval_share=args.eval_share)):
        split[name].append(record)
    train, evals = examples_from_records(split["train"]), examples_from_records(split["eval"])
    masked = tokenize(train + evals, preset.model.max_len)["loss_mask"].sum(axis=1)
    fits = sum(int(m) == len(e.completion.encode()) + 1 for m, e in zip(masked, train + evals))
    seen = len({e.prompt for e in evals} & {e.prompt for e in train})

    info = machine()
    print(f"machine: {info['cpus']} cores ({info['cpu_model']}), Python {info['python']}; "
          f"load average at start {load_average()} (other work on the machine slows every figure)")
    print(f"preset {args.preset}: model {preset.model}")
    print(f"  train {preset.train}")
    print(f"{len(train)} train / {len(evals)} eval traces; {fits} of {len(train) + len(evals)} fit "
          f"max_len whole; {seen} eval prompts also occur in train")

    started = time.perf_counter()
    result = train_and_evaluate(preset.model, preset.train, train, evals, None)
    total_s = time.perf_counter() - started
    card = result.scorecard
    # loop.py scores against the eval split's own commonest answer; also score the train one.
    eval_started = time.perf_counter()
    from trainer.model import build

    apply, _ = build(preset.model, preset.train.seed, preset.train.dtype)
    train_baseline = evaluate(apply, result.state.params, evals, preset.model, preset.train,
                              train_examples=train)
    eval_s = time.perf_counter() - eval_started
    losses = [m["loss"] for m in result.history]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {result.step} steps; eval loss "
          f"{card['loss']:.4f}, perplexity {card['perplexity']:.3f}")
    print(f"exact match {card['exact_match']:.3f} ({round(card['exact_match'] * card['items'])}"
          f"/{card['items']}, {card['scored']} with an answer)")
    print(f"baseline (commonest train answer {train_baseline['baseline']['answer']!r} for every item) "
          f"{train_baseline['baseline']['exact_match']:.3f}; best constant answer on eval "
          f"{card.get('baseline', {}).get('exact_match', float('nan')):.3f}")
    print(f"wall time: train + eval {total_s:.1f}s, one more eval (loss + greedy decoding) {eval_s:.1f}s")
    emit_json("training_quality", {
        "preset": args.preset, "count": args.count, "seed": args.seed,
        "train": len(train), "eval": len(evals), "eval_prompts_seen_in_train": seen,
        "steps": result.step, "exact_match": card["exact_match"], "scored": card["scored"],
        "baseline_train_majority": train_baseline["baseline"]["exact_match"],
        "baseline_eval_majority": card.get("baseline", {}).get("exact_match"),
        "eval_loss": card["loss"], "train_eval_s": round(total_s, 1), "eval_s": round(eval_s, 1),
        "config": json.loads(json.dumps({"model": vars(preset.model), "train": vars(preset.train)})),
        "machine": info, "load_average_at_end": load_average(),
    })


if __name__ == "__main__":
    main()
