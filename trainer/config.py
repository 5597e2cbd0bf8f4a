"""Model and training configuration: frozen dataclasses, named presets, checked input.

Configs arrive from outside (a CLI flag file, a dataset-ready event), so
``from_mapping`` refuses unknown keys and bad values with a ``ConfigError``
that names the field, instead of failing deep inside a jitted function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.errors import ConfigurationError

N_SPECIALS = 4
"""PAD, BOS, EOS, SEP follow the 256 byte values (see ``trainer.tokenizer``)."""
BYTE_VOCAB = 256 + N_SPECIALS
DTYPES = ("float32", "bfloat16")


class ConfigError(ConfigurationError):
    """A model or training config field has an unknown name or a value that cannot work."""


def _int(cls: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{cls}.{name} must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{cls}.{name} must be >= {low}, got {value}")


def _float(cls: str, name: str, value: Any, low: float, high: float, *, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{cls}.{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{cls}.{name} must be in {bracket}{low}, {high}], got {value}")


def _from_mapping(cls: type, mapping: Mapping[str, Any], base: Any = None) -> Any:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{cls.__name__} must be given as a mapping, got {type(mapping).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {unknown}; known fields are {names}"
        )
    if base is None:
        missing = [n for n in names if n not in mapping]
        if missing:
            raise ConfigError(f"{cls.__name__} is missing field(s) {missing}; give them or a preset")
        return cls(**mapping)
    return dataclasses.replace(base, **mapping)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder-only byte-level transformer LM."""

    vocab_size: int = BYTE_VOCAB  # 256 byte values + PAD/BOS/EOS/SEP; larger only wastes rows
    d_model: int = 64  # width of the residual stream
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads; must divide d_model
    d_ff: int = 256  # hidden width of each block's MLP
    max_len: int = 128  # tokens per sequence (positions are learned, so this is fixed)
    dropout: float = 0.0  # only 0 is supported: keeps train_step pure and bit-reproducible

    def __post_init__(self) -> None:
        c = "ModelConfig"
        _int(c, "vocab_size", self.vocab_size, BYTE_VOCAB)
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            _int(c, name, getattr(self, name), 1)
        _int(c, "max_len", self.max_len, 8)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"{c}.n_heads ({self.n_heads}) must divide {c}.d_model ({self.d_model})"
            )
        _float(c, "dropout", self.dropout, 0.0, 1.0, low_open=False)
        if self.dropout != 0.0:
            raise ConfigError(f"{c}.dropout must be 0 (dropout is not implemented), got {self.dropout}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], base: ModelConfig | None = None) -> ModelConfig:
        """Build from a dict (all fields, or overrides of ``base``); raises ConfigError."""
        return _from_mapping(cls, mapping, base)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batching, checkpointing and evaluation settings."""

    batch_size: int = 4  # sequences per micro-batch (one train_step call)
    grad_accum_steps: int = 1  # micro-batches averaged into one optimizer update
    learning_rate: float = 3e-3  # peak AdamW learning rate, reached after warmup
    warmup_steps: int = 5  # optimizer updates of linear warmup from 0
    total_steps: int = 30  # optimizer updates in the run; cosine decays to 0 at the end
    weight_decay: float = 0.01  # AdamW decoupled decay, applied to matrices only
    clip_norm: float = 1.0  # global gradient norm clip, applied to the accumulated gradient
    seed: int = 0  # parameter init and data order; same seed, same run
    checkpoint_every: int = 10  # optimizer updates between checkpoints (the last is always saved)
    eval_max_new_tokens: int = 64  # greedy decoding budget per eval prompt
    dtype: str = "float32"  # compute dtype ("float32" | "bfloat16"); parameters stay float32
    max_len: int | None = None  # tokens per training sequence; None: the byte model's max_len, 512 for a base model
    fsdp: bool | None = None  # shard parameters and optimizer state across the run's devices; None: when they would
    # take over half of one device's memory (GPUs report it; on CPUs None means replicated)

    def __post_init__(self) -> None:
        c = "TrainConfig"
        if self.max_len is not None:
            _int(c, "max_len", self.max_len, 8)
        for name in ("batch_size", "grad_accum_steps", "total_steps", "checkpoint_every",
                     "eval_max_new_tokens"):
            _int(c, name, getattr(self, name), 1)
        for name in ("warmup_steps", "seed"):
            _int(c, name, getattr(self, name), 0)
        if self.warmup_steps > self.total_steps:
            raise ConfigError(
                f"{c}.warmup_steps ({self.warmup_steps}) must not exceed "
                f"{c}.total_steps ({self.total_steps})"
            )
        _float(c, "learning_rate", self.learning_rate, 0.0, 10.0, low_open=True)
        _float(c, "weight_decay", self.weight_decay, 0.0, 1.0, low_open=False)
        _float(c, "clip_norm", self.clip_norm, 0.0, math.inf, low_open=True)
        if self.fsdp is not None and not isinstance(self.fsdp, bool):
            raise ConfigError(f"{c}.fsdp must be true, false or null (shard when needed), got {self.fsdp!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{c}.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Build from a dict (all fields, or overrides of ``base``); raises ConfigError."""
        return _from_mapping(cls, mapping, base)


@dataclass(frozen=True)
class BaseModelConfig:
    """A pretrained causal LM in a local Hugging Face-format directory (nothing is downloaded)."""

    path: str  # folder with config.json, *.safetensors, tokenizer.json, tokenizer_config.json

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"base_model.path must be a non-empty string (a directory), got {self.path!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> BaseModelConfig:
        return _from_mapping(cls, mapping)


DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (qwix) on a base model's projections; only the adapters train."""

    rank: int = 8  # inner dimension of each adapter
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # module names that get an adapter (all layers)

    def __post_init__(self) -> None:
        c = "LoraConfig"
        _int(c, "rank", self.rank, 1)
        _float(c, "alpha", self.alpha, 0.0, math.inf, low_open=True)
        if isinstance(self.targets, (list, tuple)):
            object.__setattr__(self, "targets", tuple(self.targets))
        if (not isinstance(self.targets, tuple) or not self.targets
                or not all(isinstance(t, str) and t.isidentifier() for t in self.targets)):
            raise ConfigError(
                f"{c}.targets must be a non-empty list of module names like {list(DEFAULT_LORA_TARGETS)}, "
                f"got {self.targets!r}"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> LoraConfig:
        return _from_mapping(cls, mapping, LoraConfig())


DEFAULT_BASE_MAX_LEN = 512
"""Tokens per training sequence of a base model when ``train.max_len`` is not given."""


class Preset(NamedTuple):
    """A model config and a train config that belong together; a base model and LoRA when fine-tuning one."""

    model: ModelConfig
    train: TrainConfig
    base: BaseModelConfig | None = None  # a pretrained model to fine-tune instead of the byte model
    lora: LoraConfig | None = None  # adapters (base models only); None with a base model: every weight trains

    @property
    def max_len(self) -> int:
        """Tokens per training sequence."""
        if self.base is None:
            return self.model.max_len
        return self.train.max_len or DEFAULT_BASE_MAX_LEN


TINY = Preset(ModelConfig(), TrainConfig())
"""Unit tests: ~124k parameters, 128-token sequences; a step takes milliseconds on CPU."""

SMALL = Preset(
    ModelConfig(d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=384),
    TrainConfig(batch_size=8, learning_rate=1e-3, warmup_steps=20, total_steps=300,
                checkpoint_every=100, eval_max_new_tokens=96),
)
"""A real (if small) run: ~0.87M parameters; a few minutes on a 2-core CPU."""

ARITH = Preset(
    ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=160),
    TrainConfig(batch_size=16, learning_rate=3e-3, warmup_steps=30, total_steps=800,
                checkpoint_every=200, eval_max_new_tokens=144),
)
"""Short arithmetic traces (``tracestream generate --kind arith``): every example, answer
included, fits 160 tokens, so greedy decoding can reach ``<answer>``; ~126k parameters."""

PRESETS = {"tiny": TINY, "small": SMALL, "arith": ARITH}


def from_mapping(mapping: Mapping[str, Any]) -> Preset:
    """``{"preset": "tiny", "model": {...}, "train": {...}}`` → Preset; raises ConfigError.

    ``preset`` (default ``"tiny"``) gives the starting values; ``model`` and
    ``train`` override single fields of it. ``base_model: {"path": DIR}``
    fine-tunes a pretrained model instead (its architecture comes from
    ``DIR/config.json``, so ``model`` is refused); ``lora`` then sets the
    adapters (default ``LoraConfig()``), and ``"lora": null`` trains every
    weight. ``train.max_len`` sets the sequence length in tokens (for the
    byte model it replaces ``model.max_len``). Any other key is refused.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"trainer config must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - {"preset", "model", "train", "base_model", "lora"})
    if unknown:
        raise ConfigError(f"unknown trainer config key(s) {unknown}; use preset, model, train, base_model, lora")
    name = mapping.get("preset", "tiny")
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    train = TrainConfig.from_mapping(mapping.get("train", {}), preset.train)
    if "base_model" not in mapping:
        if "lora" in mapping:
            raise ConfigError("lora needs a base_model: adapters train on a pretrained model's projections")
        model = ModelConfig.from_mapping(mapping.get("model", {}), preset.model)
        if train.max_len is not None and train.max_len != model.max_len:
            model = dataclasses.replace(model, max_len=train.max_len)
        return Preset(model, train)
    if "model" in mapping:
        raise ConfigError("model cannot be given with base_model: the architecture comes from its config.json")
    base = BaseModelConfig.from_mapping(mapping["base_model"])
    lora_map = mapping.get("lora", {})
    lora = None if lora_map is None else LoraConfig.from_mapping(lora_map)
    return Preset(preset.model, train, base, lora)
