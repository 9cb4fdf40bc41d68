"""A sentencepiece `tokenizer.model` rebuilt from a GGUF's SPM vocabulary.

A `.gguf` base model (Gemma 3, Phi-3, Llama 2, Mistral ...) loads in transformers with a
`tokenizer.json` only, but llama.cpp's converter reads SPM vocabularies from `tokenizer.model`
(Phi-3 refuses to convert without one; Gemma 3 otherwise takes the BPE path and fails the
pre-tokenizer check). The GGUF holds everything sentencepiece needs — pieces, scores, types and
the space-prefix flag — so the model file is rebuilt from it, and llama.cpp then writes the same
vocabulary back into the exported GGUF (verify.py checks that tokenization matches).
"""

from __future__ import annotations

from pathlib import Path

from trainer.export.errors import ExportError

UNKNOWN, UNUSED, BYTE = 2, 5, 6


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def write_sentencepiece_model(gguf_path: Path, dest: Path) -> bool:
    """Write `dest` when `gguf_path` carries an SPM (`llama`) vocabulary; False for other vocabularies."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = GGUFReader(str(gguf_path))
    if _field(reader, "tokenizer.ggml.model") != "llama":
        return False
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    if not tokens or scores is None or types is None or not len(tokens) == len(scores) == len(types):
        raise ExportError(f"{gguf_path.name}: its SPM vocabulary lacks scores or token types; export from the "
                          "original HF folder (with tokenizer.model) instead of the GGUF")
    unk = int(_field(reader, "tokenizer.ggml.unknown_token_id", 0))
    proto = pb.ModelProto()
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        # GGUF token types number like SPM piece types, except that the converter marks padding
        # pieces UNKNOWN: sentencepiece allows exactly one UNKNOWN piece, the unk id.
        kind = UNKNOWN if i == unk else (UNUSED if int(kind) == UNKNOWN else int(kind))
        proto.pieces.add(piece=piece, score=float(score), type=kind)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(t) == BYTE for t in types)
    spec.unk_id = unk
    spec.bos_id = spec.eos_id = spec.pad_id = -1  # special tokens travel in tokenizer_config.json
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    dest.write_bytes(proto.SerializeToString())
    return True
