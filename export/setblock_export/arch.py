"""One forward function for every supported architecture, used for training, export and reference.

It reads the weights of a Hugging Face ``*ForCausalLM`` module and computes the decoder with an
explicit additive attention mask and explicit position ids, which is what SBD needs (the block
mask is not causal). ``tests/test_arch.py`` checks it against the Hugging Face forward.

KV layout (the model-format contract): sequence-major ``[batch, seq, kv_heads, head_dim]``; the
presents hold only the positions of this forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
    onnx_ops: bool = False,
) -> tuple[torch.Tensor, list[KV]]:
    """Logits ``[B, S, V]`` and presents (new positions only, ``[B, S, kv_heads, head_dim]``).

    ``mask`` is additive, ``[B, 1, S, past + S]``: 0 where a query may attend, a large negative
    number where it may not. ``past`` is a list of (key, value) ``[B, past, kv_heads, head_dim]``.
    ``logits_index`` (int64 ``[R]``) keeps only those positions: logits are then ``[B, R, V]`` and
    the final norm and vocabulary projection run on R rows, not S (the positions nobody reads).
    ``onnx_ops`` (export only) computes attention with the ONNX ``Attention`` op (opset 23, GQA
    without repeating K/V, no transposes) and the norms with ``RMSNormalization``: the same maths
    in a few fused kernels instead of dozens of small ones.
    """
    if onnx_ops:
        return _forward_onnx_ops(model, input_ids, position_ids, mask, past, logits_index)
    inner = model.model
    _, heads, kv_heads, head_dim = dims(model.config)
    h = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(h, position_ids)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    b, s = input_ids.shape
    presents: list[KV] = []
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(b, s, heads, head_dim)
        k = attn.k_proj(x).view(b, s, kv_heads, head_dim)
        v = attn.v_proj(x).view(b, s, kv_heads, head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        presents.append((k.transpose(1, 2), v))
        v = v.transpose(1, 2)
        if past is not None:
            pk, pv = past[i]
            k = torch.cat([pk.transpose(1, 2), k], dim=2)
            v = torch.cat([pv.transpose(1, 2), v], dim=2)
        if kv_heads != heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        scale = head_dim**-0.5
        if sdpa:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
            o = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        o = o.transpose(1, 2).reshape(b, s, heads * head_dim)
        h = h + attn.o_proj(o)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    if logits_index is not None:
        h = h.index_select(1, logits_index)
    return model.lm_head(inner.norm(h)), presents


def _rms(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


def _forward_onnx_ops(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor,
    past: list[KV] | None,
    logits_index: torch.Tensor | None,
) -> tuple[torch.Tensor, list[KV]]:
    """`forward` for export: ONNX Attention and RMSNormalization ops, sequence-major throughout."""
    inner = model.model
    _, heads, kv_heads, head_dim = dims(model.config)
    h = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(h, position_ids)
    # RotaryEmbedding (rotate-half form) takes the first half of HF's duplicated [B, S, hd] tables
    cos, sin = cos[..., : head_dim // 2], sin[..., : head_dim // 2]
    b, s = input_ids.shape

    def rope(x: torch.Tensor, n: int) -> torch.Tensor:  # [B, S, n * hd] -> same, rotated
        return torch.onnx.ops.rotary_embedding(x, cos, sin, num_heads=n)

    presents: list[KV] = []
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        x = _rms(layer.input_layernorm, h)
        q, k3, v3 = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        if hasattr(attn, "q_norm"):  # Qwen3: per-head norm before the rotation
            q = _rms(attn.q_norm, q.view(b, s, heads, head_dim)).reshape(b, s, heads * head_dim)
            k3 = _rms(attn.k_norm, k3.view(b, s, kv_heads, head_dim)).reshape(b, s, kv_heads * head_dim)
        q, k3 = rope(q, heads), rope(k3, kv_heads)
        presents.append((k3.view(b, s, kv_heads, head_dim), v3.view(b, s, kv_heads, head_dim)))
        if past is not None:
            pk, pv = past[i]
            k3 = torch.cat([pk.reshape(b, -1, kv_heads * head_dim), k3], dim=1)
            v3 = torch.cat([pv.reshape(b, -1, kv_heads * head_dim), v3], dim=1)
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
