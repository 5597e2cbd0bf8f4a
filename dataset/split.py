"""The train/eval split: a stable hash of the trace id (with an optional salt), never a random draw."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dataset.checks import SplitName
from schemas.errors import InvalidDatasetRequest

# --- the split --------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Deterministic train/eval assignment by trace id, never random.

    A trace is eval when the first 8 bytes of ``sha256(salt + trace_id)``
    (UTF-8), read as a big-endian unsigned integer ``n``, satisfy
    ``n / 2**64 < eval_share`` (compared exactly, without float rounding).
    The same trace id lands on the same side in every dataset with the same
    split, whatever the record order or the read path.
    """

    eval_share: float = 0.0
    salt: str = ""

    def __post_init__(self) -> None:
        share = self.eval_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise InvalidDatasetRequest(
                f"eval share must be a number with 0 <= share < 1, got {share!r} "
                "(e.g. 0.1 for a tenth of the traces in eval)"
            )
        if not isinstance(self.salt, str):
            raise InvalidDatasetRequest(f"split salt must be a string, got {self.salt!r}")
        object.__setattr__(self, "eval_share", float(share))
        # n < share * 2**64 is exact: scaling by a power of two is exact in floats,
        # and Python compares int with float exactly.
        object.__setattr__(self, "_threshold", share * 2.0**64)

    def assign(self, trace_id: str) -> SplitName:
        if self.eval_share == 0.0:
            return "train"
        digest = hashlib.sha256((self.salt + trace_id).encode("utf-8")).digest()
        n = int.from_bytes(digest[:8], "big")
        return "eval" if n < self._threshold else "train"  # type: ignore[attr-defined]

    def describe(self) -> str:
        text = f"eval={self.eval_share!r}"
        return text + (f",salt={self.salt}" if self.salt else "")

    def to_avro(self) -> dict:
        return {"eval_share": self.eval_share, "salt": self.salt}

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Split:
        return cls(record.get("eval_share", 0.0), record.get("salt", ""))


def parse_split(text: str) -> Split:
    """``eval=0.1`` or ``eval=0.1,salt=S`` → a Split (the salt may not contain a comma)."""
    usage = "give eval=SHARE with 0 <= SHARE < 1, optionally ,salt=TEXT (e.g. eval=0.1,salt=v2)"
    share: float | None = None
    salt = ""
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise InvalidDatasetRequest(f"split {text!r}: {part!r} is not KEY=VALUE; {usage}")
        if key == "eval" and share is None:
            try:
                share = float(value)
            except ValueError:
                raise InvalidDatasetRequest(
                    f"split {text!r}: {value!r} is not a number; {usage}"
                ) from None
            if not math.isfinite(share):
                raise InvalidDatasetRequest(f"split {text!r}: {value!r} is not finite; {usage}")
        elif key == "salt" and not salt:
            salt = value
        else:
            raise InvalidDatasetRequest(f"split {text!r}: unexpected or repeated {key!r}; {usage}")
    if share is None:
        raise InvalidDatasetRequest(f"split {text!r} has no eval share; {usage}")
    if not 0 <= share < 1:
        raise InvalidDatasetRequest(
            f"split {text!r}: the eval share must be at least 0 and below 1; {usage}"
        )
    return Split(share, salt)
