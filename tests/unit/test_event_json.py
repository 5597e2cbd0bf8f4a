"""Run events carry JSON text by the one canonical rule the dataset hashes use."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset.hashing import canonical_bytes
from trainer.run import event_json

pytestmark = pytest.mark.unit


def test_event_json_is_the_canonical_rule_with_non_finite_floats_as_null():
    value = {"b": [1.5, float("nan"), float("inf")], "a": "café", "p": Path("/runs/x"), "n": {"z": 1, "y": None}}
    text = event_json(value)
    assert text == '{"a":"café","b":[1.5,null,null],"n":{"y":null,"z":1},"p":"/runs/x"}'
    assert text.encode() == canonical_bytes({"a": "café", "b": [1.5, None, None], "n": {"y": None, "z": 1},
                                            "p": "/runs/x"})
