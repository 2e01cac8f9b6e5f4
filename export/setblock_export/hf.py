"""Loading Hugging Face checkpoints: a folder (config.json + weights) or a single GGUF file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer


def _split(checkpoint: Path) -> tuple[Path, dict]:
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".gguf":
        return checkpoint.parent, {"gguf_file": checkpoint.name}
    return checkpoint, {}


def is_checkpoint(checkpoint: Path) -> bool:
    """A folder with config.json, or a GGUF file."""
    checkpoint = Path(checkpoint)
    return (checkpoint.suffix == ".gguf" and checkpoint.is_file()) or (checkpoint / "config.json").exists()


def has_tokenizer(checkpoint: Path) -> bool:
    """GGUF files carry their tokenizer; folders need tokenizer.json (or a slow tokenizer's files)."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".gguf":
        return True
    return any((checkpoint / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def load_model(checkpoint: Path) -> nn.Module:
    """The model in float32, eval mode (GGUF weights are de-quantized by transformers)."""
    d, kw = _split(checkpoint)
    if kw:
        model = AutoModelForCausalLM.from_pretrained(d, **kw)  # already float32; no dtype cast on GGUF
    else:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    return model.eval()


def load_tokenizer(checkpoint: Path):  # noqa: ANN201 - a transformers tokenizer
    """The fast tokenizer of the checkpoint."""
    d, kw = _split(checkpoint)
    return AutoTokenizer.from_pretrained(d, **kw)


def add_mask_row(model: nn.Module, mask_id: int) -> None:
    """Give the model an embedding row for ``mask_id`` (the mean of the others: deterministic)."""
    emb = model.get_input_embeddings().weight
    if mask_id < emb.shape[0]:
        return
    mean = emb.detach().mean(0).clone()
    model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[mask_id] = mean
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            out.weight[mask_id] = 0.0
