"""Pretrained checkpoints in Hugging Face format: checked, then loaded through Tunix; their tokenizers.

A checkpoint directory holds ``config.json`` (``model_type`` names the
architecture), one or more ``*.safetensors`` files (with
``model.safetensors.index.json`` when sharded), ``tokenizer.json`` (or
SentencePiece's ``tokenizer.model``) and ``tokenizer_config.json`` (special tokens, and the chat template when the
model has one). Nothing is downloaded.

``inspect_checkpoint`` checks everything it can before any weight is read:
a known ``model_type``, every file the index names, every tensor the
architecture needs with the shape ``config.json`` implies, and a tokenizer
that holds the model's special tokens. Each failure is a
``CheckpointError`` naming the file and the tensor. Tunix's per-family
``create_model_from_safe_tensors`` then builds the Flax NNX model (its own
loader names neither a missing tensor nor the file of a mismatched one).

``HFTokenizer`` renders an SFT pair the way ``transformers`` would: the
chat template (Jinja, with ``add_generation_prompt`` for the prompt) when
``tokenizer_config.json`` has one, otherwise the ``tunix_sft`` pair as
``prompt``, a newline, ``completion``, EOS. Loss covers the completion's
tokens only (including the end-of-turn tokens the template puts after it).

Truncation, when a rendered example is longer than ``max_len`` tokens (the
same rule as the byte tokenizer's): the prompt's tokens are cut from the
left first (its end, the question, is what the completion depends on
most); if the completion alone does not fit, the prompt is dropped and the
completion cut from the right. Every cut example is counted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ConfigError
from trainer.tokenizer import Encoded

FAMILIES = ("qwen3", "qwen2", "llama", "gemma3_text")
"""``config.json`` ``model_type`` values that load (Qwen3, Qwen2/2.5, Llama 3, text-only Gemma 3: 270M, 1B)."""

GEMMA_MODULES = {"q_proj": "q_einsum", "k_proj": "kv_einsum", "v_proj": "kv_einsum", "o_proj": "attn_vec_einsum"}
"""Tunix's Gemma 3 fuses k and v (and q too when heads == kv heads: ``qkv_einsum``); LoRA targets use HF names."""


class CheckpointError(ConfigError):
    """A base model directory cannot be used: a file is missing or malformed, or a tensor is missing or misshapen."""


# --- the architectures ---------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What ``config.json`` says about a decoder-only transformer, in Tunix's terms."""

    family: str
    num_layers: int
    vocab_size: int
    embed_dim: int
    hidden_dim: int
    num_heads: int
    head_dim: int
    num_kv_heads: int
    rope_theta: float
    norm_eps: float
    tied: bool
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # config.json's rope_scaling items (Llama 3.1+: "llama3")
    sliding_window: int | None = None  # Gemma 3: local layers' window
    local_theta: float = 10000.0  # Gemma 3: local layers' RoPE base
    query_scalar: float = 0.0  # Gemma 3: queries are scaled by query_scalar ** -0.5


def _shape(family: str, cfg: Mapping[str, Any], path: Path) -> Shape:
    def get(name: str, default: Any = None) -> Any:
        value = cfg.get(name, default)
        if value is None:
            raise CheckpointError(f"{path}: config.json has no {name!r}, which a {family} model needs")
        return value

    try:
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        if family == "gemma3_text":
            return _gemma_shape(cfg, path, heads, hidden, get)
        return Shape(
            family=family,
            num_layers=int(get("num_hidden_layers")),
            vocab_size=int(get("vocab_size")),
            embed_dim=hidden,
            hidden_dim=int(get("intermediate_size")),
            num_heads=heads,
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            rope_scaling=_rope_scaling(family, cfg.get("rope_scaling"), path),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: config.json has a non-numeric shape field: {exc}") from exc


def _gemma_shape(cfg: Mapping[str, Any], path: Path, heads: int, hidden: int, get: Callable[..., Any]) -> Shape:
    where = path / "config.json"
    layers = int(get("num_hidden_layers"))
    head_dim = int(cfg.get("head_dim") or 256)
    scalar = float(cfg.get("query_pre_attn_scalar") or head_dim)
    if scalar not in (head_dim, hidden // heads):
        raise CheckpointError(f"{where}: query_pre_attn_scalar {scalar} is neither head_dim nor hidden_size / "
                              "num_attention_heads, the two scalings Tunix's Gemma 3 has")
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    if cfg.get("layer_types", pattern) != pattern or int(cfg.get("sliding_window_pattern", 6)) != 6:
        raise CheckpointError(f"{where}: layer_types differ from Gemma 3's five sliding layers then one global, "
                              "the only pattern Tunix's Gemma 3 has")
    if not cfg.get("tie_word_embeddings", True):
        raise CheckpointError(f"{where}: tie_word_embeddings is false; Gemma 3 ties them")
    scaling = cfg.get("rope_scaling")
    if scaling and (scaling.get("rope_type", scaling.get("type")) != "linear"):
        raise CheckpointError(f"{where}: rope_scaling {scaling!r} is not supported for Gemma 3 (linear is)")
    return Shape(
        family="gemma3_text", num_layers=layers, vocab_size=int(get("vocab_size")), embed_dim=hidden,
        hidden_dim=int(get("intermediate_size")), num_heads=heads, head_dim=head_dim,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads), rope_theta=float(cfg.get("rope_theta", 1e6)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), tied=True,
        rope_scaling=tuple(sorted((scaling or {}).items())), sliding_window=int(get("sliding_window")),
        local_theta=float(cfg.get("rope_local_base_freq", 10000.0)), query_scalar=scalar,
    )


def _rope_scaling(family: str, scaling: Any, path: Path) -> tuple[tuple[str, Any], ...]:
    if not scaling:
        return ()
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if family != "llama" or kind != "llama3":
        raise CheckpointError(f"{path / 'config.json'}: rope_scaling {scaling!r} is not supported for {family} "
                              "(only Llama 3.1+'s rope_type llama3 is)")
    return tuple(sorted(scaling.items()))


def rope_frequencies(s: Shape) -> np.ndarray:
    """Inverse RoPE frequencies ``[head_dim // 2]`` as Hugging Face computes them (Llama 3 scaling included)."""
    inv = 1.0 / s.rope_theta ** (np.arange(0, s.head_dim, 2, dtype=np.float64) / s.head_dim)
    sc = dict(s.rope_scaling)
    if sc:
        factor, low, high = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv.astype(np.float32)


class rope_fix:
    """While tracing a Llama model: RoPE with the checkpoint's ``rope_theta`` and scaling.

    Tunix 0.1.7's ``llama3.model.Attention`` calls ``apply_rope`` without
    the config's ``rope_theta`` (so every Llama ran with theta 1e6, not
    Llama 3's 500000) and has no Llama 3.1 frequency scaling. Its
    module-level ``apply_rope`` is looked up when the model is traced, so
    swapping it for the duration of a trace gives the Hugging Face
    frequencies (checked against a reference forward pass in the tests).
    Qwen models pass their theta and are left alone.
    """

    def __init__(self, s: Shape) -> None:
        self.s = s
        self.saved = None

    def __enter__(self) -> None:
        if self.s.family != "llama":
            return
        import jax.numpy as jnp
        from tunix.models.llama3 import model

        inv = rope_frequencies(self.s)

        def apply_rope(inputs, positions, head_dim, rope_theta=None):
            angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv)[None, None, :]
            angles = angles[..., None, :]
            sin, cos = jnp.sin(angles).astype(inputs.dtype), jnp.cos(angles).astype(inputs.dtype)
            first, second = jnp.split(inputs, 2, axis=-1)
            return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1).astype(inputs.dtype)

        self.saved = model.apply_rope
        model.apply_rope = apply_rope

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            from tunix.models.llama3 import model

            model.apply_rope = self.saved
            self.saved = None


def expected_tensors(s: Shape) -> dict[str, tuple[int, ...]]:
    """Every tensor name the family's checkpoints hold, with its shape (PyTorch ``[out, in]`` layout)."""
    d, q, kv = s.embed_dim, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab_size, d), "model.norm.weight": (d,)}
    if not s.tied:
        out["lm_head.weight"] = (s.vocab_size, d)
    for i in range(s.num_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (s.hidden_dim, d),
            p + "mlp.up_proj.weight": (s.hidden_dim, d),
            p + "mlp.down_proj.weight": (d, s.hidden_dim),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
        if s.family == "qwen3":
            out[p + "self_attn.q_norm.weight"] = (s.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (s.head_dim,)
        if s.family == "qwen2":
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
        if s.family == "gemma3_text":
            out[p + "self_attn.q_norm.weight"] = (s.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (s.head_dim,)
            out[p + "pre_feedforward_layernorm.weight"] = (d,)
            out[p + "post_feedforward_layernorm.weight"] = (d,)
    return out


def tunix_model(s: Shape, dtype: str) -> tuple[Any, Callable[..., Any]]:
    """``(tunix ModelConfig, create_model_from_safe_tensors)`` for the family."""
    import jax.numpy as jnp

    common = dict(num_layers=s.num_layers, vocab_size=s.vocab_size, embed_dim=s.embed_dim,
                  hidden_dim=s.hidden_dim, num_heads=s.num_heads, head_dim=s.head_dim,
                  num_kv_heads=s.num_kv_heads, rope_theta=s.rope_theta, norm_eps=s.norm_eps)
    if s.family == "qwen3":
        from tunix.models.qwen3 import model, params
        cfg = model.ModelConfig(**common, use_tied_embedding=s.tied, dtype=jnp.dtype(dtype),
                                param_dtype=jnp.float32)
    elif s.family == "qwen2":
        from tunix.models.qwen2 import model, params
        cfg = model.ModelConfig(**common, use_tied_embedding=s.tied, dtype=jnp.dtype(dtype),
                                param_dtype=jnp.float32)
    elif s.family == "llama":
        from tunix.models.llama3 import model, params
        cfg = model.ModelConfig(**common, weight_tying=s.tied)
    else:
        from tunix.models.gemma3 import model
        from tunix.models.gemma3 import params_safetensors as params
        norm = model.QueryPreAttentionNormalisation
        cfg = model.ModelConfig(
            num_layers=s.num_layers, num_embed=s.vocab_size, embed_dim=s.embed_dim, hidden_dim=s.hidden_dim,
            num_heads=s.num_heads, head_dim=s.head_dim, num_kv_heads=s.num_kv_heads,
            sliding_window_size=s.sliding_window, local_base_frequency=s.local_theta,
            global_base_frequency=s.rope_theta, global_scale_factor=float(dict(s.rope_scaling).get("factor", 1.0)),
            query_pre_attn_norm=(norm.BY_ONE_OVER_SQRT_HEAD_DIM if s.query_scalar == s.head_dim
                                 else norm.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS),
            param_dtype=jnp.float32)
    return cfg, params.create_model_from_safe_tensors


# --- checking a directory ------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint directory: its config, architecture, tensors and tokenizer files."""

    path: Path
    config: dict[str, Any]
    shape: Shape
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (file, shape)
    tokenizer: HFTokenizer


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON: {exc}") from exc


def _tensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = []
        for name in sorted(set(weight_map.values())):
            if not (path / name).is_file():
                tensor = next(t for t, f in sorted(weight_map.items()) if f == name)
                raise CheckpointError(
                    f"{path / name} is missing: {index.name} puts tensor {tensor} (and others) in it; "
                    "copy every shard of the checkpoint"
                )
            files.append(path / name)
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} holds no *.safetensors file; a base model needs its weights there")
    return files


def _headers(files: Sequence[Path]) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():
                    out[name] = (file.name, tuple(f.get_slice(name).get_shape()))
        except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
    return out


def inspect_checkpoint(path: Path | str) -> Checkpoint:
    """Check a base model directory without loading its weights.

    Raises:
        CheckpointError: naming the file (and tensor) that is missing, unknown or misshapen.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise CheckpointError(f"base model directory {path} does not exist; put the checkpoint there first")
    config = _read_json(path / "config.json")
    family = config.get("model_type") if isinstance(config, dict) else None
    if family not in FAMILIES:
        raise CheckpointError(
            f"{path / 'config.json'}: model_type {family!r} is not supported; supported: {list(FAMILIES)}"
        )
    shape = _shape(family, config, path)
    tensors = _headers(_tensor_files(path))
    for name, want in expected_tensors(shape).items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} is missing from the *.safetensors files "
                                  f"(a {family} model with {shape.num_layers} layers needs it)")
        file, got = tensors[name]
        if got != want:
            raise CheckpointError(
                f"{path / file}: tensor {name} has shape {list(got)}, config.json implies {list(want)}"
            )
    tokenizer = HFTokenizer.from_dir(path, config)
    if tokenizer.vocab_size > shape.vocab_size:
        raise CheckpointError(
            f"{tokenizer.file} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocab_size {shape.vocab_size} (config.json): the tokenizer belongs to another model"
        )
    return Checkpoint(path, config, shape, tensors, tokenizer)


# --- tokenizer and chat template -------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _compile_template(source: str) -> Any:
    """The chat template compiled as transformers compiles it (sandboxed Jinja, trim/lstrip blocks)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    return env.from_string(source)


@dataclass(frozen=True, eq=False)
class HFTokenizer:
    """A checkpoint's own tokenizer (``tokenizer.json``, else SentencePiece's ``tokenizer.model`` converted by
    ``trainer.spm_tokenizer``) with its special tokens and chat template."""

    path: Path
    tokenizer: Any = dataclasses.field(repr=False)  # tokenizers.Tokenizer
    template: Any = dataclasses.field(repr=False)  # compiled jinja template, or None
    specials: dict[str, str]  # bos_token / eos_token / pad_token ... texts for the template
    stop_ids: tuple[int, ...]  # generation ends at any of these
    pad_id: int
    eos_id: int

    @classmethod
    def from_dir(cls, path: Path, config: Mapping[str, Any]) -> HFTokenizer:
        """Raises CheckpointError naming the tokenizer file that is missing or lacks a special token."""
        from tokenizers import Tokenizer

        file = path / "tokenizer.json"
        if not file.is_file() and (path / "tokenizer.model").is_file():
            from trainer.spm_tokenizer import SentencePieceError, load

            file = path / "tokenizer.model"
            try:
                tok = load(file)
            except SentencePieceError as exc:
                raise CheckpointError(str(exc)) from exc
        elif not file.is_file():
            raise CheckpointError(f"{file} is missing (and there is no tokenizer.model); a base model needs its "
                                  "tokenizer")
        else:
            try:
                tok = Tokenizer.from_file(str(file))
            except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
                raise CheckpointError(f"{file} is not a tokenizers file: {exc}") from exc
        tcfg_path = path / "tokenizer_config.json"
        tcfg = _read_json(tcfg_path) if tcfg_path.exists() else {}
        specials = {k: t for k, v in tcfg.items() if k.endswith("_token") and (t := _token_text(v))}

        def token_id(text: str, where: str) -> int:
            i = tok.token_to_id(text)
            if i is None:
                raise CheckpointError(f"{file} has no token {text!r}, which {where} names as a special token; "
                                      "the tokenizer does not belong to this model")
            return i

        ids = {k: token_id(t, f"{tcfg_path.name} {k}") for k, t in specials.items()}
        eos_ids = config.get("eos_token_id")
        gen = path / "generation_config.json"
        if gen.exists():
            eos_ids = _read_json(gen).get("eos_token_id", eos_ids)
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        if "eos_token" in ids:
            eos_ids.insert(0, ids["eos_token"])
        if not eos_ids:
            raise CheckpointError(f"{path}: no EOS token (tokenizer_config.json eos_token, or config.json "
                                  "eos_token_id); generation could never stop")
        for i in eos_ids:
            if not 0 <= int(i) < tok.get_vocab_size(with_added_tokens=True):
                raise CheckpointError(f"{path}: EOS token id {i} (config.json) is not in {file.name}")
        source = tcfg.get("chat_template")
        if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if source is None and (path / "chat_template.jinja").exists():
            source = (path / "chat_template.jinja").read_text(encoding="utf-8")
        template = None
        if source:
            try:
                template = _compile_template(source)
            except Exception as exc:  # jinja2.TemplateSyntaxError
                raise CheckpointError(f"{tcfg_path}: chat_template does not compile: {exc}") from exc
        stops = tuple(dict.fromkeys(int(i) for i in eos_ids))
        pad = ids.get("pad_token", stops[0])
        return cls(path, tok, template, specials, stops, pad, stops[0])

    @property
    def file(self) -> Path:
        """The tokenizer file read: ``tokenizer.json``, or ``tokenizer.model`` without one."""
        json_file = self.path / "tokenizer.json"
        return json_file if json_file.is_file() else self.path / "tokenizer.model"

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    **self.specials)

    def _encode(self, text: str, specials: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=specials).ids)

    def split(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        """``(prompt ids, completion ids)``: the rendered example, before truncation."""
        if self.template is None:
            p = self._encode(prompt + "\n", specials=True)
            c = self._encode(completion) + [self.eos_id]
            return p, c
        user = {"role": "user", "content": prompt}
        p_text = self._render([user], True)
        full = self._render([user, {"role": "assistant", "content": completion}], False)
        # A template that renders the prompt differently once an answer follows: the answer alone.
        c_text = full[len(p_text):] if full.startswith(p_text) else completion
        p, c = self._encode(p_text), self._encode(c_text)
        if not set(c) & set(self.stop_ids):
            c.append(self.eos_id)
        return p, c

    def encode_example(self, prompt: str, completion: str, max_len: int) -> Encoded:
        """The example as ``max_len`` tokens with its loss mask; see the module doc for truncation."""
        p, c = self.split(prompt, completion)
        cut = len(p) + len(c) > max_len
        if cut:
            room = max_len - len(c)
            p, c = (p[len(p) - room:], c) if room >= 0 else ([], c[:max_len])
        seq = p + c
        tokens = np.full(max_len, self.pad_id, np.int32)
        mask = np.zeros(max_len, np.int32)
        tokens[: len(seq)] = seq
        mask[len(p): len(seq)] = 1
        return Encoded(tokens, mask, cut)

    def encode_prompt(self, prompt: str, max_prompt_len: int) -> list[int]:
        """The prompt as rendered for generation, cut from the left to ``max_prompt_len`` tokens."""
        if self.template is None:
            ids = self._encode(prompt + "\n", specials=True)
        else:
            ids = self._encode(self._render([{"role": "user", "content": prompt}], True))
        return ids[max(0, len(ids) - max_prompt_len):]

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids back to text, up to the first stop token, special tokens skipped."""
        out = []
        for i in ids:
            if int(i) in self.stop_ids:
                break
            out.append(int(i))
        return self.tokenizer.decode(out, skip_special_tokens=True)

