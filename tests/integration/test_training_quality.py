"""Trained on generated arithmetic traces that went through Kafka, the model beats a constant answer.

The whole path a user takes: ``generate --kind arith`` events published to
traces.raw, validated and materialized by the processors, snapshotted as a
dataset with an eval split, replayed from Kafka by ``run_training`` (what
``tracestream train`` calls) with the ``arith`` preset, then greedy decoding
on the eval split. The baseline is recomputed here from the generated events
and the split, independently of the scorecard. A longer run's figures come
from ``python -m bench.training_quality``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.dataset import Split
from schemas.registry import default_registry
from streams.generator import generate_events
from streams.snapshot import DatasetRequest
from tests.integration.support import dataset_of, kafka_of, running_processors
from trainer.run import run_training

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(600)]

CODEC = AvroCodec(default_registry())
COUNT = 3000
STEPS = 600  # the arith preset runs 800 at 3e-3 (exact match ~0.99, bench); a shorter, hotter run here
CONFIG = {"preset": "arith", "train": {"total_steps": STEPS, "learning_rate": 5e-3}}
MARGIN = 0.3  # exact match must beat the better of the two constant-answer baselines by this much


async def test_arith_run_scores_clearly_above_a_constant_answer(settings: Settings, tmp_path: Path):
    events = list(generate_events(COUNT, seed=21, broken_share=0.02, kind="arith"))
    valid = [e for e in events if e.expected_reason is None]
    async with running_processors(settings):
        manifest = await dataset_of(settings, events, DatasetRequest("arith", split=Split(eval_share=0.1)))
    assert manifest.record_count == len(valid)  # the broken ones were dead-lettered, not trained on

    outcome = await run_training(
        settings, kafka_of(settings), "arith", None,
        CONFIG, run_id="arith-quality", workdir=tmp_path / "run",
    )
    card = outcome.scorecard
    print(f"exact match {card['exact_match']:.3f} on {card['items']} eval items; "
          f"baseline {card['baseline']}; loss {outcome.final_loss:.4f}")

    # The baselines, from what was generated and how the dataset splits trace ids.
    side = {e.trace_id: manifest.split.assign(e.trace_id) for e in valid}
    eval_answers = [e.record["final_answer"] for e in valid if side[e.trace_id] == "eval"]
    train_answers = Counter(e.record["final_answer"] for e in valid if side[e.trace_id] == "train")
    top = max(train_answers.values())
    commonest_train = min(a for a, c in train_answers.items() if c == top)  # ties: the answer that sorts first
    train_majority = sum(a == commonest_train for a in eval_answers) / len(eval_answers)
    best_constant = max(Counter(eval_answers).values()) / len(eval_answers)

    assert outcome.steps == STEPS
    assert card["items"] == len(eval_answers) == manifest.eval_count
    # The scorecard's baseline: the commonest train answer, given for every eval item.
    assert card["baseline"]["from"] == "train" and card["baseline"]["answer"] == commonest_train
    assert card["baseline"]["exact_match"] == pytest.approx(train_majority)
    assert card["exact_match"] >= max(best_constant, train_majority) + MARGIN
    assert card["scored"] >= 0.9 * card["items"]  # it learned the format: nearly every item has an answer
