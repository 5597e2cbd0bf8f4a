"""Training quality on short arithmetic traces: eval exact match against a majority-answer baseline.

    python -m bench.training_quality [--count 3000] [--seed 11] [--eval-share 0.1]
        [--preset arith] [--steps N] [--set train.learning_rate=0.003 ...]

Generates ``--count`` arithmetic traces (``generate_events(kind="arith")``),
splits them as a dataset would (``dataset.split.Split`` by trace id), trains
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
from dataset.filter import TraceFilter
from dataset.select import select
from dataset.split import Split
from devtools.generator import generate_events
from trainer.config import from_mapping
from trainer.data import examples_from_records, tokenize
from trainer.evaluate import extract_answer, generate, majority_baseline
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

    def progress(m: dict[str, Any]) -> None:
        if m["step"] % 50 == 0:
            print(f"  step {m['step']}: loss {m['loss']:.4f} at {time.perf_counter() - started:.0f}s",
                  flush=True)

    result = train_and_evaluate(preset.model, preset.train, train, evals, None, on_metrics=progress)
    total_s = time.perf_counter() - started
    card = result.scorecard
    # Decode once more to score per item: the unseen prompts alone, and the train-majority baseline.
    decode_started = time.perf_counter()
    texts = generate(result.state.params, [e.prompt for e in evals], preset.model,
                     preset.train.eval_max_new_tokens, dtype=preset.train.dtype)
    decode_s = time.perf_counter() - decode_started
    train_prompts = {e.prompt for e in train}
    hits = [extract_answer(t) == e.final_answer for t, e in zip(texts, evals)]
    unseen = [h for h, e in zip(hits, evals) if e.prompt not in train_prompts]
    unseen_em = sum(unseen) / len(unseen) if unseen else float("nan")
    baseline = majority_baseline(evals, train)
    losses = [m["loss"] for m in result.history]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {result.step} steps; eval loss "
          f"{card['loss']:.4f}, perplexity {card['perplexity']:.3f}")
    print(f"exact match {card['exact_match']:.3f} ({sum(hits)}/{card['items']}, {card['scored']} with an "
          f"answer); on the {len(unseen)} eval prompts not in train: {unseen_em:.3f}")
    print(f"baseline: the commonest train answer {baseline['answer']!r} for every item scores "
          f"{baseline['exact_match']:.3f}; the best constant answer on eval (scorecard) "
          f"{card['baseline']['exact_match']:.3f}")
    print(f"wall time: train + eval {total_s:.1f}s; greedy decoding of {len(evals)} eval items {decode_s:.1f}s")
    emit_json("training_quality", {
        "preset": args.preset, "count": args.count, "seed": args.seed,
        "train": len(train), "eval": len(evals), "eval_prompts_seen_in_train": seen,
        "steps": result.step, "exact_match": card["exact_match"], "scored": card["scored"],
        "exact_match_unseen_prompts": unseen_em, "unseen_prompts": len(unseen),
        "baseline_train_majority": baseline["exact_match"],
        "baseline_best_constant_on_eval": card["baseline"]["exact_match"],
        "eval_loss": card["loss"], "train_eval_s": round(total_s, 1), "decode_s": round(decode_s, 1),
        "config": json.loads(json.dumps({"model": vars(preset.model), "train": vars(preset.train)})),
        "machine": info, "load_average_at_end": load_average(),
    })


if __name__ == "__main__":
    main()
