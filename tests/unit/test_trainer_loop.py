"""The loop: a crashed run resumed from its checkpoint gives the uninterrupted loss curve."""

import dataclasses

import jax
import numpy as np
import pytest

from devtools.generator import generate_events
from trainer.config import TINY
from trainer.data import examples_from_records
from trainer.loop import train_and_evaluate

pytestmark = pytest.mark.unit

CFG = dataclasses.replace(TINY.train, total_steps=12, warmup_steps=2, checkpoint_every=4)


def examples(n=6):
    return examples_from_records(e.record for e in generate_events(n, seed=11, broken_share=0.0))


class Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    train = examples()
    whole = train_and_evaluate(TINY.model, CFG, train, [], None)
    assert whole.checkpoint is None and len(whole.history) == 12 and whole.step == 12

    def crash_at_6(m):
        if m["step"] == 6:
            raise Crash

    saved = []
    with pytest.raises(Crash):
        train_and_evaluate(TINY.model, CFG, train, [], tmp_path, on_metrics=crash_at_6,
                           on_checkpoint=lambda *a: saved.append(a))
    assert [s for s, _, _ in saved] == [4]
    resumed = train_and_evaluate(TINY.model, CFG, train, train[:2], tmp_path,
                                 on_checkpoint=lambda *a: saved.append(a))
    assert resumed.resumed_from == 4
    assert [m["micro_step"] for m in resumed.history] == list(range(5, 13))
    np.testing.assert_allclose([m["loss"] for m in resumed.history],
                               [m["loss"] for m in whole.history[4:]], rtol=0, atol=0)  # bit-identical on CPU
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(whole.state.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)  # bit-identical on CPU
    # the resumed run announces the checkpoint it resumed from first (the crash may have come between saving
    # and announcing it; the run's publisher drops what runs.events already holds), then the new ones
    assert [s for s, _, _ in saved] == [4, 4, 8, 12] and saved[1][2] == saved[0][2]
    assert resumed.checkpoint == tmp_path / "checkpoints" / "12"
    assert resumed.checkpoint_sha256 == saved[-1][2] and len(saved[-1][2]) == 64
    assert resumed.scorecard["items"] == 2 and resumed.scorecard["loss"] > 0
    # a finished run in the same workdir restores and does nothing more
    again = train_and_evaluate(TINY.model, CFG, train, [], tmp_path)
    assert again.resumed_from == 12 and again.history == []
