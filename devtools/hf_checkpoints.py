"""Tiny Hugging Face-format checkpoints for tests and benches: random weights, a BPE tokenizer trained here.

The files are what a real Qwen3 / Qwen2.5 / Llama 3 directory holds
(``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with a chat template), with the real tensor names
written out here independently of ``trainer.hf``, only far smaller. A
numpy reference forward pass (``reference_logits``) follows the Hugging
Face modelling code, to check what the trainer loads against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

QWEN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def train_tokenizer(texts: Iterable[str], specials: list[str], vocab_size: int = 400, *,
                    single_digits: bool = False):
    """A byte-level BPE tokenizer (as Qwen's and Llama 3's are) trained on ``texts``.

    ``single_digits``: every digit its own token, as Qwen's pre-tokenizer splits them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if single_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return tok


def train_sentencepiece(texts: Iterable[str], specials: list[str], vocab_size: int, file: Path) -> None:
    """A SentencePiece BPE model with byte fallback and no dummy prefix (as Gemma's ``tokenizer.model``):
    ``specials`` are the pad/eos/bos pieces where they are named so, the rest user-defined symbols."""
    import io

    import sentencepiece as spm

    named = {"pad": next((t for t in specials if "pad" in t), None), "eos": next((t for t in specials if "eos" in t), None),
             "bos": next((t for t in specials if "bos" in t), None)}
    ids = {"unk_id": 0, "pad_id": 1 if named["pad"] else -1, "eos_id": 2, "bos_id": 3 if named["bos"] else -1}
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        hard_vocab_limit=False, byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", character_coverage=1.0, minloglevel=2, **ids,
        unk_piece="<unk>", pad_piece=named["pad"] or "<pad>", eos_piece=named["eos"] or "</s>",
        bos_piece=named["bos"] or "<s>", user_defined_symbols=[t for t in specials if t not in named.values()])
    file.write_bytes(buf.getvalue())


def write_checkpoint(
    path: Path,
    family: str = "qwen3",
    *,
    texts: Iterable[str] = ("What is 1 + 2?", "<answer>3</answer>"),
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    intermediate: int = 64,
    tied: bool | None = None,
    chat_template: bool = True,
    vocab_size: int = 400,
    seed: int = 0,
    scale: float = 0.1,
    single_digits: bool = False,
    sentencepiece: bool = False,
) -> Path:
    """Write a tiny random ``family`` checkpoint ("qwen3", "qwen2", "llama" or "gemma3_text") to ``path``.

    ``sentencepiece``: the tokenizer is a ``tokenizer.model`` only (no ``tokenizer.json``).
    """
    path.mkdir(parents=True, exist_ok=True)
    llama, gemma = family == "llama", family == "gemma3_text"
    specials = LLAMA_SPECIALS if llama else GEMMA_SPECIALS if gemma else QWEN_SPECIALS
    if sentencepiece:
        from trainer.spm_tokenizer import load

        train_sentencepiece(texts, specials, vocab_size, path / "tokenizer.model")
        tok = load(path / "tokenizer.model")
    else:
        tok = train_tokenizer(texts, specials, vocab_size, single_digits=single_digits)
        tok.save(str(path / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    tied = (not llama) if tied is None else tied
    eos = "<|eot_id|>" if llama else "<eos>" if gemma else "<|im_end|>"
    tcfg = {"eos_token": eos, "pad_token": "<|end_of_text|>" if llama else "<pad>" if gemma else "<|endoftext|>"}
    if llama or gemma:
        tcfg["bos_token"] = "<|begin_of_text|>" if llama else "<bos>"
    if chat_template:
        tcfg["chat_template"] = LLAMA_TEMPLATE if llama else GEMMA_TEMPLATE if gemma else QWEN_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2), encoding="utf-8")
    config = {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "gemma3_text": "Gemma3ForCausalLM"}[family]],
        "model_type": family, "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "rms_norm_eps": 1e-6, "rope_theta": 10000.0 if llama else 1000000.0,
        "tie_word_embeddings": tied, "torch_dtype": "float32", "eos_token_id": tok.token_to_id(eos),
        "max_position_embeddings": 2048,
    }
    if gemma:  # a window shorter than the tests' sequences, so the local layers' mask matters
        config.update(sliding_window=4, rope_local_base_freq=10000.0, query_pre_attn_scalar=head_dim,
                      eos_token_id=[tok.token_to_id("<eos>"), tok.token_to_id("<end_of_turn>")],
                      hidden_activation="gelu_pytorch_tanh")
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": norm(hidden)}
    if not tied:
        tensors["lm_head.weight"] = w(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        tensors[p + "self_attn.k_proj.weight"] = w(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.v_proj.weight"] = w(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        if family in ("qwen3", "gemma3_text"):
            tensors[p + "self_attn.q_norm.weight"] = norm(head_dim)
            tensors[p + "self_attn.k_norm.weight"] = norm(head_dim)
        if family == "qwen2":
            tensors[p + "self_attn.q_proj.bias"] = w(heads * head_dim)
            tensors[p + "self_attn.k_proj.bias"] = w(kv_heads * head_dim)
            tensors[p + "self_attn.v_proj.bias"] = w(kv_heads * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = w(intermediate, hidden)
        tensors[p + "mlp.up_proj.weight"] = w(intermediate, hidden)
        tensors[p + "mlp.down_proj.weight"] = w(hidden, intermediate)
        tensors[p + "input_layernorm.weight"] = norm(hidden)
        tensors[p + "post_attention_layernorm.weight"] = norm(hidden)
        if gemma:
            tensors[p + "pre_feedforward_layernorm.weight"] = norm(hidden)
            tensors[p + "post_feedforward_layernorm.weight"] = norm(hidden)
    from safetensors.numpy import save_file

    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits ``[T, vocab]`` of one sequence, computed as the Hugging Face modelling code does, in float64."""
    cfg = json.loads((path / "config.json").read_text())
    t = {k: v.astype(np.float64) for k, v in read_tensors(path).items()}
    eps, hd = cfg["rms_norm_eps"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def rms(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)

    def rope(x: np.ndarray) -> np.ndarray:  # x [T, heads, hd]; rotate_half, as HF's apply_rotary_pos_emb
        inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
        sc = cfg.get("rope_scaling")
        if sc:  # transformers' _compute_llama3_parameters
            factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
            old = sc["original_max_position_embeddings"]
            wavelen = 2 * np.pi / inv
            llama = np.where(wavelen > old / low, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * llama / factor + smooth * llama
            medium = ~(wavelen < old / high) & ~(wavelen > old / low)
            inv = np.where(medium, smoothed, llama)
        ang = np.arange(x.shape[0])[:, None] * inv[None]
        cos = np.cos(np.concatenate([ang, ang], -1))[:, None]
        sin = np.sin(np.concatenate([ang, ang], -1))[:, None]
        half = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
        return x * cos + half * sin

    x = t["model.embed_tokens.weight"][ids]
    n = len(ids)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q, k, v = (h @ t[p + f"self_attn.{m}_proj.weight"].T + t.get(p + f"self_attn.{m}_proj.bias", 0.0)
                   for m in "qkv")
        q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        if cfg["model_type"] == "qwen3":
            q, k = rms(q, t[p + "self_attn.q_norm.weight"]), rms(k, t[p + "self_attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        scores = np.where(np.tril(np.ones((n, n), bool))[None], scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", weights, v).reshape(n, nh * hd)
        x = x + att @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        gate = h @ t[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    x = rms(x, t["model.norm.weight"])
    head = t["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
    return x @ head.T


def gemma3_reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """As ``reference_logits``, for transformers' Gemma3ForCausalLM (text): (1 + w) norms, scaled embeddings,
    sandwich norms, sliding-window local layers (every sixth global), gelu-tanh MLP."""
    cfg = json.loads((path / "config.json").read_text())
    t = {k: v.astype(np.float64) for k, v in read_tensors(path).items()}
    hd, nh, nkv, d = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]

    def rms(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (1.0 + w) * x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"])

    def rope(x: np.ndarray, theta: float) -> np.ndarray:
        inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
        ang = np.arange(x.shape[0])[:, None] * inv[None]
        cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
        return x * cos + np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    def gelu_tanh(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    n = len(ids)
    x = t["model.embed_tokens.weight"][ids] * np.sqrt(d)
    q_idx, k_idx = np.arange(n)[:, None], np.arange(n)[None]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sliding = (i + 1) % 6 != 0
        h = rms(x, t[p + "input_layernorm.weight"])
        q, k, v = (h @ t[p + f"self_attn.{m}_proj.weight"].T for m in "qkv")
        q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        q, k = rms(q, t[p + "self_attn.q_norm.weight"]), rms(k, t[p + "self_attn.k_norm.weight"])
        theta = cfg["rope_local_base_freq"] if sliding else cfg["rope_theta"]
        q, k = rope(q, theta), rope(k, theta)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) * cfg["query_pre_attn_scalar"] ** -0.5
        visible = (k_idx <= q_idx) & ((q_idx - k_idx < cfg["sliding_window"]) if sliding else True)
        scores = np.where(visible[None], scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", weights, v).reshape(n, nh * hd) @ t[p + "self_attn.o_proj.weight"].T
        x = x + rms(att, t[p + "post_attention_layernorm.weight"])
        h = rms(x, t[p + "pre_feedforward_layernorm.weight"])
        mlp = (gelu_tanh(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T))
        x = x + rms(mlp @ t[p + "mlp.down_proj.weight"].T, t[p + "post_feedforward_layernorm.weight"])
    return rms(x, t["model.norm.weight"]) @ t["model.embed_tokens.weight"].T
