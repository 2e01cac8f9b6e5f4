"""One forward function for every supported architecture, used for training, export and reference.

It reads the weights of a Hugging Face ``*ForCausalLM`` module and computes the decoder with an
explicit additive attention mask and explicit position ids, which is what SBD needs (the block
mask is not causal). ``tests/test_arch.py`` checks it against the Hugging Face forward.

KV layout: sequence-major, ``[batch, seq, kv_heads, head_dim]`` here and packed
``[batch, seq, kv_heads * head_dim]`` (the same memory) in the exported graph (``forward_onnx``,
kv_layout ``sequence-major-packed``); the presents hold only the positions of this forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


class UnsupportedArchitecture(ValueError):
    """The checkpoint's architecture is not one the exporter knows."""


def architecture_of(model: nn.Module) -> str:
    """The HF class name, checked against SUPPORTED (clear error otherwise)."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise UnsupportedArchitecture(
            f"architecture {name} is not supported; supported: {', '.join(sorted(SUPPORTED))}"
        )
    return name


def dims(config) -> tuple[int, int, int, int]:  # noqa: ANN001 - any HF config
    """(layers, heads, kv_heads, head_dim)."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, heads, kv, head_dim


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


KV = tuple[torch.Tensor, torch.Tensor]


def forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor,
    past: list[KV] | None = None,
    *,
    sdpa: bool = False,
    logits_index: torch.Tensor | None = None,
    consts: OnnxConsts | None = None,
) -> tuple[torch.Tensor, list[KV]]:
    """Logits ``[B, S, V]`` and presents (new positions only, ``[B, S, kv_heads, head_dim]``).

    ``mask`` is additive, ``[B, 1, S, past + S]``: 0 where a query may attend, a large negative
    number where it may not. ``past`` is a list of (key, value) ``[B, past, kv_heads, head_dim]``.
    ``logits_index`` (int64 ``[R]``) keeps only those positions: logits are then ``[B, R, V]`` and
    the final norm and vocabulary projection run on R rows, not S (the positions nobody reads).
    With ``consts`` (export only) it is :func:`forward_onnx` on 4-D past/presents: the same maths
    in the ONNX ops the graph is exported with, for comparing the two forms.
    """
    if consts is not None:
        packed = [(k.flatten(2), v.flatten(2)) for k, v in past] if past is not None else None
        logits, pres = forward_onnx(model, consts, input_ids, position_ids, mask, packed, logits_index)
        hd = dims(model.config)[3]
        return logits, [(k.unflatten(2, (-1, hd)), v.unflatten(2, (-1, hd))) for k, v in pres]
    inner = model.model
    h = inner.embed_tokens(input_ids)
    cos, sin = rotary(model, h, position_ids)
    presents: list[KV] = []
    for i, layer in enumerate(inner.layers):
        h, kv = decoder_layer(layer, h, cos, sin, mask, past[i] if past is not None else None, sdpa=sdpa)
        presents.append(kv)
    if logits_index is not None:
        h = h.index_select(1, logits_index)
    return model.lm_head(inner.norm(h)), presents


def rotary(model: nn.Module, h: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables of ``position_ids``, ``[B, 1, S, head_dim]`` each."""
    cos, sin = model.model.rotary_emb(h, position_ids)
    return cos.unsqueeze(1), sin.unsqueeze(1)


def decoder_layer(
    layer: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | BlockMask,
    past: KV | None = None,
    *,
    sdpa: bool = False,
) -> tuple[torch.Tensor, KV]:
    """One decoder layer: the new hidden states and this forward's (key, value) presents.

    ``mask`` is the additive float mask of :func:`forward`, or a FlexAttention ``BlockMask``
    (training on CUDA: the sparse form of the same mask, no dense matrix).
    """
    attn = layer.self_attn
    b, s, _ = h.shape
    _, heads, kv_heads, head_dim = dims(attn.config)
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(b, s, heads, head_dim)
    k = attn.k_proj(x).view(b, s, kv_heads, head_dim)
    v = attn.v_proj(x).view(b, s, kv_heads, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    present = (k.transpose(1, 2), v)
    v = v.transpose(1, 2)
    if past is not None:
        pk, pv = past
        k = torch.cat([pk.transpose(1, 2), k], dim=2)
        v = torch.cat([pv.transpose(1, 2), v], dim=2)
    scale = head_dim**-0.5
    if isinstance(mask, BlockMask):
        o = _flex(q, k, v, mask, scale)
    else:
        if kv_heads != heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        if sdpa:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
            o = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
    o = o.transpose(1, 2).reshape(b, s, heads * head_dim)
    h = h + attn.o_proj(o)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, present


_COMPILED_FLEX = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, scale: float) -> torch.Tensor:
    """FlexAttention: compiled on CUDA (its fast kernel), eager elsewhere (the tests' reference)."""
    global _COMPILED_FLEX  # noqa: PLW0603 - one compiled kernel per process
    if q.is_cuda:
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention)
        fn = _COMPILED_FLEX
    else:
        fn = flex_attention
    return fn(q, k, v, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _rms(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


class OnnxConsts(nn.Module):
    """What the export graph reads as initializers instead of computing per step.

    Rotary tables for every position (``[max_positions, head_dim / 2]``, gathered by position id
    inside the ``RotaryEmbedding`` op) and, where Q and K get no per-head norm (Llama, Qwen2), the
    Q and K projections stacked into one matrix: one MatMul and one rotation for both.
    """

    def __init__(self, model: nn.Module, max_positions: int) -> None:
        super().__init__()
        inner = model.model
        _, _, _, head_dim = dims(model.config)
        w = inner.embed_tokens.weight
        pos = torch.arange(max_positions)[None]
        with torch.no_grad():
            cos, sin = inner.rotary_emb(torch.zeros(1, 1, dtype=w.dtype), pos)
        # RotaryEmbedding (rotate-half form) takes the first half of HF's duplicated tables
        self.register_buffer("cos", cos[0, :, : head_dim // 2].contiguous(), persistent=False)
        self.register_buffer("sin", sin[0, :, : head_dim // 2].contiguous(), persistent=False)
        self.fused_qk = not hasattr(inner.layers[0].self_attn, "q_norm")
        self.qk = nn.ModuleList()
        if self.fused_qk:
            for layer in inner.layers:
                a = layer.self_attn
                bias = a.q_proj.bias is not None
                lin = nn.Linear(a.q_proj.in_features, a.q_proj.out_features + a.k_proj.out_features, bias=bias)
                with torch.no_grad():
                    lin.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight]))
                    if bias:
                        lin.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias]))
                self.qk.append(lin)


def forward_onnx(
    model: nn.Module,
    consts: OnnxConsts,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor,
    past: list[KV] | None,
    logits_index: torch.Tensor | None,
) -> tuple[torch.Tensor, list[KV]]:
    """`forward` as exported: ONNX ``Attention``, ``RotaryEmbedding`` and ``RMSNormalization`` ops.

    K/V are packed sequence-major, ``[batch, seq, kv_heads * head_dim]`` (the same memory as
    ``[batch, seq, kv_heads, head_dim]``), so neither the past nor the presents need a reshape.
    """
    inner = model.model
    _, heads, kv_heads, head_dim = dims(model.config)
    h = inner.embed_tokens(input_ids)
    b, s = input_ids.shape
    qd, kd = heads * head_dim, kv_heads * head_dim

    def rope(x: torch.Tensor, n: int) -> torch.Tensor:  # [B, S, n * hd] -> same, rotated
        return torch.onnx.ops.rotary_embedding(x, consts.cos, consts.sin, position_ids, num_heads=n)

    presents: list[KV] = []
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        x = _rms(layer.input_layernorm, h)
        if consts.fused_qk:
            q, k3 = rope(consts.qk[i](x), heads + kv_heads).split([qd, kd], dim=-1)
        else:  # Qwen3: per-head norms on Q and K before the rotation
            q = _rms(attn.q_norm, attn.q_proj(x).view(b, s, heads, head_dim)).reshape(b, s, qd)
            k3 = _rms(attn.k_norm, attn.k_proj(x).view(b, s, kv_heads, head_dim)).reshape(b, s, kd)
            q, k3 = rope(q, heads), rope(k3, kv_heads)
        v3 = attn.v_proj(x)
        presents.append((k3, v3))
        if past is not None:
            pk, pv = past[i]
            k3 = torch.cat([pk, k3], dim=1)
            v3 = torch.cat([pv, v3], dim=1)
        o = torch.onnx.ops.attention(
            q,
            k3,
            v3,
            mask,
            q_num_heads=heads,
            kv_num_heads=kv_heads,
            scale=head_dim**-0.5,
        )[0]
        h = h + attn.o_proj(o)
        h = h + layer.mlp(_rms(layer.post_attention_layernorm, h))
    if logits_index is not None:
        h = h.index_select(1, logits_index)
    return model.lm_head(_rms(inner.norm, h)), presents
