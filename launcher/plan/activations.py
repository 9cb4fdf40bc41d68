"""Activation memory of one LoRA training step: what autograd saves per token in one decoder layer, the
activations of a micro-batch, the logits and loss, and DoRA's weight-norm scratch.

The activation terms itemise the tensors autograd saves in one decoder layer of transformers 5.x with PEFT,
as measured with `torch.autograd.graph.saved_tensors_hooks` (bench/plan.py compares the total against
measured peaks on CPU). launcher/plan/memory.py adds them to the weights, adapter and optimizer state.

The kernel options (trainer/model/kernels.py): `training.kernels: liger` and `torch` save less in each RMSNorm (its
input in the model dtype and 1/rms, not an fp32 copy); `liger` also in each MLP (the gate and up outputs; the activation is recomputed in
backward), from Liger Kernel's autograd functions. `training.padding_free` is flash-attention without padding: no
mask, and the worst case is unchanged, a micro-batch of full rows (`batch x seq_len` real tokens): it removes
only the padding of rows shorter than the batch's longest, which lowers typical steps, not the peak.
`training.compile` changes nothing here (the same tensors are saved; inductor may fuse some away, never adds).
"""

from __future__ import annotations

from launcher.plan.arch import Architecture, Linear
from launcher.plan.objective import FUSED, FUSED_TOKEN_TILE, FUSED_VOCAB_TILE
from launcher.plan.setup import DTYPE_BYTES, Setup
from trainer.spec.training import loss_chunk_rows


def _site_bytes(width: int, readers: list[Linear], setup: Setup, shared: bool) -> float:
    """Saved bytes per token where `readers` (targeted linears) read one input of `width` features.

    Each adapter's lora_A keeps its own input when dropout makes one (plus the dropout mask) or when
    it casts the input to its own dtype: under autocast PEFT's fp32 adapters get a 16-bit copy each;
    without autocast (CPU) a 16-bit model's input is cast to the fp32 adapter. Otherwise (fp32, or
    DeepSpeed's all-16-bit model) the input is saved once, unless it is saved anyway (`shared`)."""
    if not readers:
        return 0.0
    a = DTYPE_BYTES[setup.dtype]
    a_in = 2 if setup.mixed else 4  # what lora_A's input is: 16-bit under autocast / DeepSpeed, else fp32
    copies = setup.autocast or a_in != a
    mask = 1 if setup.device == "cuda" else a_in  # a bool mask on CUDA, a float one on CPU
    if setup.dropout > 0:
        saved = len(readers) * width * (mask + a_in)
    elif copies:
        saved = len(readers) * width * a_in
    else:
        saved = 0 if shared else width * a
    saved += len(readers) * setup.r * a_in  # lora_B's input
    if setup.method == "dora":  # the base and adapter outputs, kept for the magnitude's gradient
        saved += sum(2 * lin.out_features * a for lin in readers)
    return saved


def layer_activation_bytes(arch: Architecture, setup: Setup) -> float:
    """Bytes autograd saves per token in one decoder layer (no checkpointing)."""
    a = DTYPE_BYTES[setup.dtype]
    h, q, kv, inter = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    targets = [lin for lin in arch.targets(setup.target_modules) if lin.part in ("attention", "mlp")]

    def readers(*names: str) -> list[Linear]:
        return [lin for lin in targets if lin.name in names]

    saved = arch.norms_per_layer * norm_bytes(arch, setup)
    if arch.qk_norm:
        saved += 4 * (q + kv) + 4 * (arch.num_heads + arch.num_kv_heads)
    saved += _site_bytes(h, readers("q_proj", "k_proj", "v_proj", "qkv_proj"), setup, shared=False)
    saved += _site_bytes(q, readers("o_proj"), setup, shared=True)  # the attention output is saved anyway
    saved += _site_bytes(h, readers("gate_proj", "up_proj", "gate_up_proj"), setup, shared=False)
    saved += _site_bytes(inter, readers("down_proj"), setup, shared=False)
    if setup.quantization == "8bit":  # LLM.int8 saves each quantized linear's input (4-bit saves none)
        saved += (2 * h + inter) * a
    flash = setup.attn == "flash_attention_2"
    kv_saved = kv if flash or kv == q else q  # with a (packing) mask sdpa/eager run on repeated k/v heads
    saved += (2 * q + 2 * kv_saved) * a  # query, key, value and attention output
    kind = attention_kind(arch, setup)
    if kind == "eager":  # softmax output in fp32 (+ its 16-bit copy)
        saved += arch.num_heads * setup.seq_len * (4 + (a if a != 4 else 0))
    else:
        saved += arch.num_heads * 4  # log-sum-exp
    if kind == "sdpa":  # sdpa turns the boolean (packing) mask into an additive one per call and keeps it
        saved += setup.seq_len * a
    if arch.num_experts:  # per routed token and expert: gate/up outputs, gated activations, weighted output
        saved += arch.experts_per_token * (6 * inter + h) * a + arch.num_experts * 4  # gpt-oss's clamped SwiGLU
    else:  # the activation's input and output, and the up projection; Liger's fused kernel keeps no output
        saved += (2 if setup.kernels == "liger" else 3) * inter * a
    return saved


def norm_bytes(arch: Architecture, setup: Setup) -> int:
    """Saved per token by one RMSNorm: an fp32 copy of its input and 1/rms; Liger's and the fused torch norm's
    (`training.kernels: torch`, trainer/model/fused_norm.py): its input as it is, and 1/rms."""
    return (DTYPE_BYTES[setup.dtype] if setup.kernels in ("liger", "torch") else 4) * arch.hidden_size + 4


def attention_kind(arch: Architecture, setup: Setup) -> str:
    """What runs: gpt-oss's attention sinks run eager in kubetune whatever is asked (trainer.model.arch)."""
    if setup.attn != "eager" and not arch.sdpa:
        return "eager"
    return setup.attn


def activations(arch: Architecture, setup: Setup) -> int:
    """Saved activations of one micro-batch, alive together with the logits at the start of the backward pass.

    Checkpointing keeps only each layer's input and recomputes one layer at a time later in the backward
    pass, when the logits and their gradient are already freed: that layer adds only what exceeds them."""
    tokens = setup.rows * setup.seq_len
    a = DTYPE_BYTES[setup.dtype]
    layer = layer_activation_bytes(arch, setup) * tokens
    if setup.checkpointing:
        body = arch.num_layers * arch.hidden_size * a * tokens + max(0, layer - logits(arch, setup))
    else:
        body = arch.num_layers * layer
    final_norm = norm_bytes(arch, setup) * tokens
    return int(body + final_norm + masks(arch, setup) + merged_experts(arch, setup))


def masks(arch: Architecture, setup: Setup) -> int:
    """The dense attention masks of one forward of the micro-batch's rows (none for flash-attention)."""
    if attention_kind(arch, setup) == "flash_attention_2":  # padding_free too (it needs flash-attention)
        return 0  # packed rows reach flash-attention as position ids, no dense mask
    a = DTYPE_BYTES[setup.dtype]
    return arch.mask_kinds * setup.rows * setup.seq_len**2 * (1 if attention_kind(arch, setup) != "eager" else a)


def merged_experts(arch: Architecture, setup: Setup) -> int:
    """`target_parameters`: PEFT's ParamWrapper computes each adapted expert tensor as W + delta (full size) in
    every forward, and the experts' matmuls keep it alive until the backward pass: one per targeted tensor per
    layer, or for one layer at a time with checkpointing."""
    per_layer = sum(f.experts * f.dim1 * f.dim2 for f in arch.parameter_targets(setup.target_parameters))
    layers = 1 if setup.checkpointing else arch.num_layers
    return per_layer * layers * DTYPE_BYTES[setup.dtype]


def logits(arch: Architecture, setup: Setup) -> int:
    """`training.loss: full`: batch x seq x vocab: the logits (model dtype), their fp32 copy for the loss, its saved
    log-softmax and the gradient of that at the start of the backward pass. `chunked` (`liger` and `cce` alike): one chunk of rows of the trained positions
    at a time (`loss_chunk_rows`) — its logits in the model dtype, two fp32 buffers (the logits, the soft cap's tanh,
    then the softmax gradient in place) and the gradient in the model dtype for its matmul — plus the hidden states
    of every trained position (at most all tokens) and their gradient, and the model's own one-position logits.
    Under every strategy: zero3 / fsdp gather the head's weight for the chunks (trainer/train/head.py), counted with
    the gathered parameters (memory.py `_gathered`). A preference objective (launcher/plan/objective.py) counts its
    micro-batch's rows (dpo, orpo: chosen + rejected): dpo and kto through TRL's fused head (`fused_head`), orpo as
    `full` (its trainer computes the full logits with the model's own head)."""
    tokens = setup.rows * setup.seq_len
    a = DTYPE_BYTES[setup.dtype]
    if setup.objective in FUSED:
        return fused_head(arch, setup)
    if setup.loss == "full" or setup.objective == "orpo":  # ORPO's trainer: the model's own head, full logits
        per = a + 4 + 4 + 4 if a != 4 else 4 + 4 + 4
        return int(tokens * arch.vocab_size * per)
    rows = min(tokens, loss_chunk_rows(arch.vocab_size))
    chunk = rows * arch.vocab_size * (8 + (2 * a if a != 4 else 0))
    return int(chunk + 2 * tokens * arch.hidden_size * a + setup.batch * arch.vocab_size * (a + 4))


def fused_tile(arch: Architecture, setup: Setup) -> int:
    """The tile buffer of TRL's fused LM head (trl/kernels/chunked_logprob.py): at most FUSED_TOKEN_TILE positions x
    FUSED_VOCAB_TILE columns in the compute dtype, that wide whatever the vocabulary, folded in place by a Triton
    kernel on GPU. On CPU its torch fallback folds each tile (positions x at most FUSED_VOCAB_TILE vocabulary entries)
    through fp32 temporaries: seven alive at once in the backward, as measured with torch.profiler. QLoRA under
    autocast also casts each vocabulary chunk of the fp32 head to the compute dtype."""
    a = DTYPE_BYTES[setup.dtype]
    rows, cols = min(setup.rows * setup.seq_len, FUSED_TOKEN_TILE), min(arch.vocab_size, FUSED_VOCAB_TILE)
    tile = rows * FUSED_VOCAB_TILE * a + (7 * rows * cols * 4 if setup.device == "cpu" else 0)
    if setup.quantization != "none" and setup.autocast:
        tile += cols * arch.hidden_size * a
    return tile


def fused_head(arch: Architecture, setup: Setup) -> int:
    """dpo / kto: TRL's fused LM head (`add_fused_lm_head`) never holds the `[tokens x vocab]` logits. Its autograd
    function saves the trained positions' hidden states (a copy: at most every token); its backward recomputes one
    tile at a time into the logits gradient and accumulates the hidden states' gradient in fp32 (then cast to the
    model dtype). Per-position scalars (log-probabilities, log-sum-exp, entropy) are left out."""
    tokens = setup.rows * setup.seq_len
    a = DTYPE_BYTES[setup.dtype]
    return int(tokens * arch.hidden_size * (a + 4 + a) + fused_tile(arch, setup))


def reference_forward(arch: Architecture, setup: Setup) -> int:
    """dpo / kto with a reference forward each step: what that no_grad forward of the micro-batch's rows (kto: the
    rows, then the KL rows, one forward at a time) adds to the peak. It runs after the policy's forward, with every
    saved activation and the head's saved hidden states alive, and is freed before the backward: so it adds only
    what exceeds the head's backward working set (`fused_head` less its saved hidden states). Alive during it: the
    residual stream and its masks, and the largest of one layer's transients (an RMSNorm's two fp32 copies, attention's
    query, key, value and output, or the MLP's gate, up and activation outputs) or of the fused head's forward."""
    if not setup.reference:
        return 0
    tokens = setup.rows * setup.seq_len
    a = DTYPE_BYTES[setup.dtype]
    h, q, kv = arch.hidden_size, arch.q_dim, arch.kv_dim
    kind = attention_kind(arch, setup)
    attention = (2 * q + 2 * (kv if kind == "flash_attention_2" or kv == q else q)) * a
    if kind == "eager":
        attention += arch.num_heads * setup.seq_len * (4 + (a if a != 4 else 0))
    mlp = (arch.experts_per_token if arch.num_experts else 1) * 3 * arch.intermediate_size * a
    layer = tokens * (h * a + max(8 * h, attention, mlp))  # the normed input beside the largest transient
    head = tokens * h * a + fused_tile(arch, setup)  # the positions' hidden-state copy and one tile
    transient = tokens * h * a + masks(arch, setup) + max(layer, head)
    return max(0, transient - (fused_head(arch, setup) - tokens * h * a))


def dora_scratch(arch: Architecture, setup: Setup) -> int:
    """DoRA's weight norm, one module at a time: the adapter's full-size delta (PEFT computes it through an
    in x in identity) and the merged weight, for the largest targeted linear."""
    lin = max(arch.targets(setup.target_modules), key=lambda x: x.in_features * x.out_features)
    return (lin.in_features + 2 * lin.out_features) * lin.in_features * DTYPE_BYTES[setup.dtype]
