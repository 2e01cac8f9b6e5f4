"""Shared fixtures: tiny random checkpoints of each supported architecture (built, never downloaded)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from setblock_export.init import DEMO_CHAT_TEMPLATE, EOS, MASK, PAD, train_tokenizer
from setblock_export.tasks import PROMPT, TASKS

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def texts(n: int = 200) -> list[str]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        task = list(TASKS)[i % 3]
        q, a = TASKS[task](rng)
        out.append(PROMPT.format(q=q) + " " + a)
    return out


@pytest.fixture(scope="session")
def tokenizer_obj():  # noqa: ANN201
    return train_tokenizer(texts(), 400)


def make_checkpoint(
    path: Path, arch: str, tok, *, mask: bool = True, seed: int = 0, std: float = 0.3, **overrides
) -> Path:  # noqa: ANN001
    """A tiny random checkpoint of `arch` with the demo tokenizer (optionally without a mask token)."""
    cfg_cls, model_cls = ARCHS[arch]
    if not mask:  # a tokenizer with no mask (or reserved) token at all, and no spare embedding row
        tok = train_tokenizer(texts(), 400, specials=(EOS, PAD))
    kw = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=arch != "qwen2",
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        initializer_range=std,
    )
    if arch == "qwen3":
        kw["head_dim"] = 16
    kw.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kw))
    if arch == "qwen2":  # give the biases values, so they are really checked
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.1)
                layer.self_attn.k_proj.bias.normal_(0, 0.1)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, mask_token=MASK if mask else None
    )
    fast.chat_template = DEMO_CHAT_TEMPLATE
    path.mkdir(parents=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
