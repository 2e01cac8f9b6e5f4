"""`init`: a from-scratch Llama checkpoint with a BPE tokenizer trained on the data (demo model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .data import document_texts

EOS, PAD, MASK = "<|endoftext|>", "<|pad|>", "<|mask|>"

# Renders one user message q as "Question: q\nAnswer:"; earlier assistant turns end with EOS.
DEMO_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if not loop.first %}\n{% endif %}Question: {{ m['content'] }}\nAnswer:"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def train_tokenizer(texts: list[str], vocab_size: int, specials: tuple[str, ...] = (EOS, PAD, MASK)) -> Tokenizer:
    """Byte-level BPE with single-digit tokens and the special tokens (default EOS, PAD, MASK)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def init_checkpoint(
    data: Path,
    out: Path,
    *,
    vocab_size: int = 512,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 8,
    kv_heads: int = 4,
    intermediate: int = 688,
    max_positions: int = 512,
    seed: int = 0,
    init_std: float = 0.02,
) -> Path:
    """Write a random-weight LlamaForCausalLM + tokenizer (with chat template) to ``out``."""
    if out.exists():
        raise FileExistsError(f"output folder {out} already exists; remove it or choose another --out")
    texts = document_texts(data)
    tok = train_tokenizer(texts, vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, mask_token=MASK, model_max_length=max_positions
    )
    fast.chat_template = DEMO_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        rope_theta=10000.0,
        initializer_range=init_std,
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    (out / "setblock_train.json").write_text(
        json.dumps({"base_model": "from scratch (setblock_export init)", "init_seed": seed, "runs": []}, indent=2)
    )
    return out
