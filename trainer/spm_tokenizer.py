"""A SentencePiece ``tokenizer.model`` as a ``tokenizers.Tokenizer``, for checkpoints without ``tokenizer.json``.

The conversion ``transformers`` performs (``convert_slow_tokenizer``'s
``SpmConverter``): the model's pieces and scores become a ``tokenizers``
Unigram or BPE model (BPE merges recovered from the pieces, ranked by
score), the model's normalization (its compiled character map, extra whitespace removed when it says so)
applies, spaces become ``▁`` with the model's dummy prefix (before the text's first section), unknown bytes fall
back to ``<0xNN>`` pieces, and control and user-defined pieces become special
tokens, so a chat template's markers encode as one token each. The result
encodes and decodes as the SentencePiece model does (tested against
``sentencepiece`` itself), and everything downstream sees one tokenizer type.
"""

from __future__ import annotations

from pathlib import Path

from schemas.errors import TracestreamError

UNIGRAM, BPE = 1, 2  # sentencepiece_model.proto TrainerSpec.ModelType
UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4  # ModelProto.SentencePiece.Type


class SentencePieceError(TracestreamError):
    """``tokenizer.model`` is not a SentencePiece model this converter reads."""


def _bpe_merges(pieces: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary, the higher-scored piece's merges first."""
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = []
    for piece, score in pieces:
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in ids and piece[k:] in ids]
        merges.extend(sorted(local, key=lambda m: (ids[m[0]], ids[m[1]])))
    merges.sort(key=lambda m: m[2], reverse=True)
    return [(left, right) for left, right, _ in merges]


def load(file: Path):
    """``file`` (a SentencePiece model) as a ``tokenizers.Tokenizer``.

    Raises:
        SentencePieceError: the file does not parse, or its model type is neither unigram nor BPE.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        raise SentencePieceError(f"{file} is not a SentencePiece model: {exc}") from exc
    if not proto.pieces:
        raise SentencePieceError(f"{file} is not a SentencePiece model: it holds no pieces")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    spec = proto.trainer_spec
    byte_fallback = bool(spec.byte_fallback)
    unk = spec.unk_id if 0 <= spec.unk_id < len(pieces) else None
    if spec.model_type == UNIGRAM:
        model = models.Unigram(pieces, unk, byte_fallback)
    elif spec.model_type == BPE:
        model = models.BPE({p: i for i, (p, _) in enumerate(pieces)}, _bpe_merges(pieces),
                           unk_token=None if unk is None else pieces[unk][0], fuse_unk=True,
                           byte_fallback=byte_fallback)
    else:
        raise SentencePieceError(f"{file}: SentencePiece model type {spec.model_type} is not read "
                                 "(only unigram and BPE models are)")
    tok = Tokenizer(model)
    norm = proto.normalizer_spec
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    prefix = bool(norm.add_dummy_prefix)
    # Spaces become ▁; the dummy prefix goes before the text's first section only, not after every
    # special token (transformers' non-legacy rule).
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", "first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces
                            if p.type in (UNKNOWN, CONTROL, USER_DEFINED)])
    return tok


__all__ = ["SentencePieceError", "load"]
