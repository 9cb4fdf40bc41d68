"""The shape of a causal LM as far as training memory goes, read from a HF `config.json`.

Every `nn.Linear` LoRA can target (name, shape, how many), every other parameter, and the sizes
activations scale with. The counts follow the module definitions of transformers 5.x for the
families below; tests/unit/test_plan_arch.py checks them against real models (parameter totals
and PEFT's own LoRA counts). Torch-free: `launch plan` imports this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import UserError

DENSE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
FAMILIES = (*DENSE, "gemma3", "gpt_oss")


@dataclass(frozen=True)
class Linear:
    """`count` instances of one `nn.Linear` (e.g. every layer's `q_proj`)."""

    path: str  # dotted path below the layer, as `target_modules` matches it: `self_attn.q_proj`
    in_features: int
    out_features: int
    count: int
    bias: bool
    part: str  # attention | mlp | vision | head (the LM head: never part of `all-linear`)
    tied: bool = False  # the LM head sharing the input embedding's weights

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def weights(self) -> int:
        return 0 if self.tied else self.in_features * self.out_features * self.count

    @property
    def biases(self) -> int:
        return self.out_features * self.count if self.bias else 0

    def matches(self, target: str) -> bool:
        """PEFT's rule for a name in `target_modules`: the module's name or a dotted suffix of its path."""
        return self.path == target or self.path.endswith("." + target)


@dataclass(frozen=True)
class Fused:
    """`count` instances of one fused 3-D parameter `[experts, dim1, dim2]` (e.g. every layer's experts'
    `gate_up_proj`): not a linear layer, adapted only through `adapter.target_parameters`."""

    path: str  # dotted path below the layer: `mlp.experts.gate_up_proj`
    experts: int
    dim1: int
    dim2: int
    count: int

    def matches(self, target: str) -> bool:
        """PEFT's rule for a name in `target_parameters`: the full parameter name or a dotted suffix of it."""
        return self.path == target or self.path.endswith("." + target)

    def lora_params(self, r: int) -> int:
        """PEFT's ParamWrapper: lora_A `dim1 x (r * experts)` and lora_B `(r * experts) x dim2`, per instance."""
        return self.count * r * self.experts * (self.dim1 + self.dim2)


@dataclass(frozen=True)
class Architecture:
    model_type: str
    hidden_size: int
    num_layers: int
    intermediate_size: int  # per expert for MoE models
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    linears: tuple[Linear, ...]
    other_params: int  # embeddings, norms, routers, attention sinks, vision embeddings (kept in the model dtype)
    expert_params: int = 0  # MoE experts stored as fused 3-D parameters (not nn.Linear: never target_modules)
    fused: tuple[Fused, ...] = ()  # the experts' 3-D weight tensors, which `adapter.target_parameters` can adapt
    num_experts: int = 0
    experts_per_token: int = 0
    norms_per_layer: int = 2  # RMSNorms applied to full hidden states in each decoder layer
    qk_norm: bool = False  # per-head RMSNorm on queries and keys (Qwen3, Gemma 3)
    mask_kinds: int = 1  # distinct attention masks per step (sliding + full layers: 2)
    sdpa: bool = True  # transformers has an sdpa kernel for it
    shipped: str = ""  # how the checkpoint stores weights when that differs from the training dtype
    source: str = ""  # where these numbers come from

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def total_params(self) -> int:
        linear = sum(lin.weights + lin.biases for lin in self.linears)
        return linear + self.other_params + self.expert_params

    @property
    def lm_head(self) -> Linear | None:
        return next((lin for lin in self.linears if lin.part == "head"), None)

    def targets(self, target_modules: str | list[str] | tuple[str, ...]) -> list[Linear]:
        """The linears an adapter with these `target_modules` wraps (PEFT's matching, `all-linear` included).

        Raises UserError naming the names that match nothing, as PEFT would refuse them."""
        if isinstance(target_modules, str):
            if target_modules != "all-linear":
                target_modules = [target_modules]
            else:
                return [lin for lin in self.linears if lin.part != "head"]
        unmatched = [t for t in target_modules if not any(lin.matches(t) for lin in self.linears)]
        if unmatched:
            names = sorted({lin.name for lin in self.linears})
            raise UserError(
                f"adapter.target_modules: {', '.join(unmatched)} match no linear layer of this {self.model_type} "
                f"model; its linear layers are {names} (or use `all-linear`)"
            )
        return [lin for lin in self.linears if any(lin.matches(t) for t in target_modules)]

    def parameter_targets(self, target_parameters: list[str] | tuple[str, ...] | None) -> list[Fused]:
        """The fused parameters an adapter with these `target_parameters` wraps; UserError naming unmatched names."""
        targets = list(target_parameters or [])
        unmatched = [t for t in targets if not any(f.matches(t) for f in self.fused)]
        if unmatched:
            names = [f.path for f in self.fused] or "none"
            raise UserError(
                f"adapter.target_parameters: {', '.join(unmatched)} match no fused parameter of this {self.model_type} "
                f"model; its fused (3-D expert) parameters are {names}"
            )
        return [f for f in self.fused if any(f.matches(t) for t in targets)]

    def attention_targets(self) -> list[str]:
        """The names of the language model's attention projections (the `fewer target modules` rung)."""
        return [lin.name for lin in self.linears if lin.part == "attention"]


def _get(config: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        raise UserError(f"{where}: config has no `{key}`; it is needed to plan memory (is it a causal LM config?)")
    return value


def _decoder_linears(c: Mapping[str, Any], family: str, h: int, q: int, kv: int, inter: int,
                     layers: int) -> list[Linear]:
    """The attention and MLP linears of one family's decoder layers."""
    if family == "phi3":  # fused projections
        return [
            Linear("self_attn.qkv_proj", h, q + 2 * kv, layers, False, "attention"),
            Linear("self_attn.o_proj", q, h, layers, False, "attention"),
            Linear("mlp.gate_up_proj", h, 2 * inter, layers, False, "mlp"),
            Linear("mlp.down_proj", inter, h, layers, False, "mlp"),
        ]
    qkv_bias = {"qwen2": True, "gpt_oss": bool(c.get("attention_bias", True)), "mistral": False}.get(
        family, bool(c.get("attention_bias", False)))
    o_bias = False if family in ("qwen2", "mistral") else qkv_bias
    attention = [
        Linear("self_attn.q_proj", h, q, layers, qkv_bias, "attention"),
        Linear("self_attn.k_proj", h, kv, layers, qkv_bias, "attention"),
        Linear("self_attn.v_proj", h, kv, layers, qkv_bias, "attention"),
        Linear("self_attn.o_proj", q, h, layers, o_bias, "attention"),
    ]
    if family == "gpt_oss":  # the experts are fused 3-D parameters, not linears
        return attention
    mlp_bias = bool(c.get("mlp_bias", False)) if family == "llama" else False
    return attention + [
        Linear("mlp.gate_proj", h, inter, layers, mlp_bias, "mlp"),
        Linear("mlp.up_proj", h, inter, layers, mlp_bias, "mlp"),
        Linear("mlp.down_proj", inter, h, layers, mlp_bias, "mlp"),
    ]


def _vision(v: Mapping[str, Any], text_hidden: int, where: str) -> tuple[list[Linear], int]:
    """SigLIP vision tower + Gemma 3's projector: its linears and other parameters."""
    d = int(_get(v, "hidden_size", where))
    inter = int(_get(v, "intermediate_size", where))
    n = int(_get(v, "num_hidden_layers", where))
    patch, image = int(_get(v, "patch_size", where)), int(_get(v, "image_size", where))
    channels = int(v.get("num_channels", 3))
    prefix = "vision_tower.vision_model.encoder.layers"
    linears = [Linear(f"{prefix}.self_attn.{p}", d, d, n, True, "vision") for p in ("q_proj", "k_proj", "v_proj")]
    linears += [
        Linear(f"{prefix}.self_attn.out_proj", d, d, n, True, "vision"),
        Linear(f"{prefix}.mlp.fc1", d, inter, n, True, "vision"),
        Linear(f"{prefix}.mlp.fc2", inter, d, n, True, "vision"),
    ]
    patch_embedding = channels * patch * patch * d + d
    positions = (image // patch) ** 2 * d
    layer_norms = n * 2 * 2 * d + 2 * d  # two LayerNorms per layer + the post-layernorm, weight and bias
    projector = d * text_hidden + d  # mm_input_projection_weight + mm_soft_emb_norm
    other = patch_embedding + positions + layer_norms + projector
    if v.get("vision_use_head", True):  # attention-pooling head: probe, in-projection, LayerNorm, MLP
        head = "vision_tower.vision_model.head"
        linears += [Linear(f"{head}.attention.out_proj", d, d, 1, True, "vision"),
                    Linear(f"{head}.mlp.fc1", d, inter, 1, True, "vision"),
                    Linear(f"{head}.mlp.fc2", inter, d, 1, True, "vision")]
        other += d + 3 * d * d + 3 * d + 2 * d
    return linears, other


def from_hf_config(config: Mapping[str, Any], source: str) -> Architecture:
    """An Architecture from a `config.json` dict; `source` names where it came from (for messages)."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(
            f"{source}: model_type {model_type!r} is not one `launch plan` knows; known: {', '.join(FAMILIES)}. "
            "Plan with a config of a known family, or add the architecture to launcher/plan/arch.py"
        )
    text, vision, family = _language_model(config, model_type)
    h = int(_get(text, "hidden_size", source))
    layers = int(_get(text, "num_hidden_layers", source))
    heads = int(_get(text, "num_attention_heads", source))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or h // heads)
    inter = int(_get(text, "intermediate_size", source))
    vocab = int(_get(text, "vocab_size", source))
    tied = _tied(config, text, family)
    q, kv = heads * head_dim, kv_heads * head_dim
    linears = _decoder_linears(text, family, h, q, kv, inter, layers)
    linears.append(Linear("lm_head", h, vocab, 1, False, "head", tied=tied))
    norms = {"gemma2": 4, "gemma3_text": 4}.get(family, 2)
    qk_norm = family in ("qwen3", "gemma3_text")
    other = vocab * h + h + layers * norms * h + (layers * 2 * head_dim if qk_norm else 0)
    experts = experts_per_token = expert_params = 0
    fused: tuple[Fused, ...] = ()
    if family == "gpt_oss":  # experts: gate_up + down with biases; router weight + bias; attention sinks
        experts = int(_get(text, "num_local_experts", source))
        experts_per_token = int(text.get("num_experts_per_tok") or text.get("experts_per_token") or 0)
        expert_params = layers * experts * (h * 2 * inter + 2 * inter + inter * h + h)
        other += layers * (experts * h + experts + heads)
        fused = (Fused("mlp.experts.gate_up_proj", experts, h, 2 * inter, layers),
                 Fused("mlp.experts.down_proj", experts, inter, h, layers))
    if vision is not None:
        vision_linears, vision_other = _vision(vision, h, source)
        linears = vision_linears + linears
        other += vision_other
    layer_types = text.get("layer_types") or []
    mask_kinds = len(set(layer_types)) if layer_types else 2 if family in ("gemma2", "gemma3_text") else 1
    return Architecture(
        model_type=model_type, hidden_size=h, num_layers=layers, intermediate_size=inter, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab, tie_word_embeddings=tied,
        linears=tuple(linears), other_params=other, expert_params=expert_params, fused=fused, num_experts=experts,
        experts_per_token=experts_per_token, norms_per_layer=norms, qk_norm=qk_norm,
        mask_kinds=mask_kinds, sdpa=family != "gpt_oss", shipped=_shipped(config), source=source,
    )


def _language_model(
    config: Mapping[str, Any], model_type: str
) -> tuple[Mapping[str, Any], Mapping[str, Any] | None, str]:
    """(the language model's config, the vision tower's or None, the family its decoder layers follow)."""
    if model_type == "gemma3":  # multimodal: the language model is `text_config`, plus a vision tower
        return config.get("text_config") or {}, config.get("vision_config") or {}, "gemma3_text"
    return config, None, model_type


def _tied(config: Mapping[str, Any], text: Mapping[str, Any], family: str) -> bool:
    """Whether the LM head shares the input embedding's weights."""
    gemma = family.startswith("gemma")  # transformers' default: only the Gemma families tie their head
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", gemma)))
    if family == "gemma":
        tied = True  # Gemma ties its output head to the embedding, whatever the config says
    return tied


def _shipped(config: Mapping[str, Any]) -> str:
    """How the checkpoint stores weights, when that differs from the training dtype ("" when it does not)."""
    shipped = ""
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") == "mxfp4":
        shipped = "MoE experts shipped as MXFP4 (4.25 bits); transformers cannot train MXFP4, so they are de-quantized"
    elif quant.get("quant_method"):
        shipped = f"checkpoint pre-quantized with {quant.get('quant_method')}"
    return shipped
