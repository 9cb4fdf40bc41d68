"""Model FLOPs of training, from a model's `config.json`: the one formula the trainer's MFU (trainer/tracking/speed.py)
and the launcher's deadline estimate (launcher/plan/deadline.py) share. Torch-free.

The convention (the "model FLOPs" of PaLM's MFU, as commonly quoted):

- matmuls only: norms, activations, rotary embeddings, softmax and residual adds are not counted;
- 6 FLOPs per weight and token (`FORWARD` 2 + `BACKWARD` 4: the input gradient and the weight gradient), for every
  weight a token's matmuls use, frozen or not. A LoRA run skips the frozen weights' gradient (2 of the 4), so the
  hardware does about 4 per frozen weight: this is the count MFU figures are quoted in, not the work done.
  The adapter's own weights (given as `adapter_params`) count 6 as well;
- recomputation (gradient checkpointing) is not counted: it is work the hardware does, not the model;
- MoE: only the experts a token is routed to (`num_experts_per_tok` of them) and the router;
- attention: scores and values, 2 x 2 FLOPs per (query, key, channel) forward, x 3 for training, for the keys each
  query actually attends: a token at position p of its sample attends p + 1 keys (causal; packed samples never
  see each other), at most the window on sliding-window layers;
- the LM head at the positions where it is computed (the caller says how many: only the labelled ones unless
  `training.loss: full`), the input embedding not at all (a lookup).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FORWARD, BACKWARD = 2, 4  # FLOPs per weight and token: a multiply-add forward; input and weight gradients backward
TRAIN = FORWARD + BACKWARD
CONVENTION = ("6 FLOPs per weight and token (forward 2, backward 4, frozen weights too; no recomputation), "
              "attention at the keys each token attends, the LM head where it is computed")
# decoder families whose layers are attention (q, k, v, o) + a gated MLP (gate, up, down; Phi-3 fuses gate+up)
GATED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen2_moe",
         "qwen3_moe", "gpt_oss")
MULTIMODAL = ("gemma3",)  # the language model is `text_config`; text-only training never runs the vision tower


class UnknownModel(ValueError):
    """The config is not of a family whose FLOPs this module knows."""


def dense_flops(params: int, tokens: int, recompute: bool = False) -> int:
    """Training FLOPs of `tokens` tokens through `params` weights; `recompute`: with checkpointing's second forward
    (hardware FLOPs, for time estimates; MFU never counts it)."""
    return ((2 if recompute else 1) * FORWARD + BACKWARD) * params * tokens


def attended_keys(length: int, window: int | None = None) -> int:
    """Keys all queries of one causal sample of `length` tokens attend (each its own position + 1, at most `window`)."""
    if window is None or length <= window:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


@dataclass(frozen=True)
class ModelFlops:
    model_type: str
    matmul_params: int  # decoder weights one token's matmuls use (attention, MLP or its routed experts, router)
    head_params: int  # hidden x vocab: the LM head, per position it is computed at
    attention_width: int  # query heads x head dim: channels of the score and value matmuls
    windows: tuple[int | None, ...]  # per layer: its sliding window, None for full attention
    adapter_params: int = 0  # the adapter's weights (LoRA A and B), all on the token path

    def train_flops(self, tokens: int, head_positions: int, keys: Mapping[int | None, int]) -> int:
        """Model FLOPs of training on `tokens` tokens (not padding), the LM head at `head_positions` of them,
        `keys[w]`: keys attended by all of them on a layer of window `w` (None: full attention)."""
        dense = dense_flops(self.matmul_params + self.adapter_params, tokens)
        head = dense_flops(self.head_params, head_positions)
        attention = sum(dense_flops(2 * self.attention_width, keys[w]) for w in self.windows)
        return dense + head + attention

    def per_token(self, sample_length: int, head_fraction: float = 1.0) -> float:
        """Model FLOPs per token for samples of `sample_length` tokens, the head at `head_fraction` of positions."""
        keys = {w: attended_keys(sample_length, w) for w in set(self.windows)}
        whole = self.train_flops(sample_length, 0, keys) + dense_flops(self.head_params, 1) * head_fraction
        return whole / sample_length

    def with_adapter(self, params: int) -> ModelFlops:
        return ModelFlops(self.model_type, self.matmul_params, self.head_params, self.attention_width, self.windows,
                          params)


def _int(config: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    if default is None:
        raise UnknownModel(f"config has none of {', '.join(keys)}")
    return default


def _mlp_params(c: Mapping[str, Any], h: int, layers: int) -> int:
    """Weights of every layer's MLP one token passes through: dense, or its routed experts and the router."""
    experts = _int(c, "num_local_experts", "num_experts", default=0)
    if experts == 0:
        return layers * 3 * h * _int(c, "intermediate_size")
    per_token = _int(c, "num_experts_per_tok", "experts_per_token")
    expert = 3 * h * _int(c, "moe_intermediate_size", "intermediate_size")
    shared = _int(c, "shared_expert_intermediate_size", default=0)  # Qwen2-MoE: one shared expert + its gate
    sparse_layer = per_token * expert + h * experts + (3 * h * shared + h if shared else 0)
    step, dense_only = _int(c, "decoder_sparse_step", default=1), set(c.get("mlp_only_layers") or ())
    sparse = [i not in dense_only and (i + 1) % step == 0 for i in range(layers)]  # Qwen MoE's rule
    dense = 3 * h * _int(c, "intermediate_size", default=0)
    return sum(sparse_layer if s else dense for s in sparse)


def _windows(c: Mapping[str, Any], layers: int) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: full attention), from `layer_types` (transformers 5 writes it for every
    family with sliding layers); without it, Mistral's `sliding_window` holds for every layer."""
    window = c.get("sliding_window")
    types: Sequence[str] = c.get("layer_types") or []
    if types:
        return tuple(int(window) if t == "sliding_attention" and window else None for t in types[:layers])
    if c.get("model_type") == "mistral" and window:
        return (int(window),) * layers
    return (None,) * layers


def from_config(config: Mapping[str, Any]) -> ModelFlops:
    """A model's FLOPs from its HF config (a `config.json` dict, or `PretrainedConfig.to_dict()`)."""
    model_type = str(config.get("model_type"))
    text = (config.get("text_config") or {}) if model_type in MULTIMODAL else config
    family = str(text.get("model_type") or model_type)
    if family not in GATED:
        raise UnknownModel(f"model_type {model_type!r}: its FLOPs per token are not known here; known: "
                           f"{', '.join(GATED + MULTIMODAL)}")
    h, layers = _int(text, "hidden_size"), _int(text, "num_hidden_layers")
    heads = _int(text, "num_attention_heads")
    kv_heads = _int(text, "num_key_value_heads", default=heads)
    head_dim = _int(text, "head_dim", default=h // heads)
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = layers * (h * q + 2 * h * kv + q * h)
    return ModelFlops(model_type, attention + _mlp_params(text, h, layers), h * _int(text, "vocab_size"), q,
                      _windows(text, layers))
