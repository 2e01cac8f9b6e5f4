"""Loading Hugging Face checkpoints: a folder (config.json + weights), a single GGUF file, or a
LoRA adapter folder written by ``finetune --lora-rank`` (merged into its base on load)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

RESERVED_MASK_CANDIDATES = ("<|mask|>", "<mask>", "[MASK]", "<|reserved_special_token_0|>")
ADAPTER_CONFIG = "adapter_config.json"
TRAIN_RECORD = "setblock_train.json"


class CheckpointError(ValueError):
    """A checkpoint (folder, GGUF file or adapter) that cannot be used as it is."""


def _split(checkpoint: Path) -> tuple[Path, dict]:
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".gguf":
        return checkpoint.parent, {"gguf_file": checkpoint.name}
    return checkpoint, {}


def is_adapter(checkpoint: Path) -> bool:
    """A LoRA adapter folder (``adapter_config.json``), as ``finetune --lora-rank`` writes."""
    return (Path(checkpoint) / ADAPTER_CONFIG).is_file()


def is_checkpoint(checkpoint: Path) -> bool:
    """A folder with config.json, a GGUF file, or a LoRA adapter folder."""
    checkpoint = Path(checkpoint)
    return (
        (checkpoint.suffix == ".gguf" and checkpoint.is_file())
        or (checkpoint / "config.json").exists()
        or is_adapter(checkpoint)
    )


def has_tokenizer(checkpoint: Path) -> bool:
    """GGUF files carry their tokenizer; folders need tokenizer.json (or a slow tokenizer's files)."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".gguf":
        return True
    return any((checkpoint / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def weights_file(checkpoint: Path) -> Path | None:
    """The file whose checksum identifies a base checkpoint (the GGUF, or model.safetensors)."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".gguf":
        return checkpoint
    f = checkpoint / "model.safetensors"
    return f if f.is_file() else None


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_base(adapter: Path) -> Path:
    """The base checkpoint of an adapter folder, checked against the checksum recorded at training.

    The path is the one recorded in ``setblock_train.json`` (relative paths are taken from the
    adapter folder); ``SETBLOCK_LORA_BASE`` overrides it, for an adapter moved to another machine.
    """
    import os

    adapter = Path(adapter)
    record_path = adapter / TRAIN_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    base_field = record.get("lora_base") or json.loads((adapter / ADAPTER_CONFIG).read_text()).get(
        "base_model_name_or_path"
    )
    override = os.environ.get("SETBLOCK_LORA_BASE")
    if not base_field and not override:
        raise CheckpointError(f"{adapter}: the adapter names no base model; set SETBLOCK_LORA_BASE to its path")
    base = Path(override) if override else Path(base_field)
    if not base.is_absolute() and not override:
        base = (adapter / base).resolve()
    if not is_checkpoint(base) or is_adapter(base):
        raise CheckpointError(
            f"{adapter}: its base model {base} is not a checkpoint here; set SETBLOCK_LORA_BASE to the base "
            "(the folder or .gguf file the adapter was trained on)"
        )
    want = record.get("lora_base_sha256")
    wf = weights_file(base)
    if want and wf is not None and sha256(wf) != want:
        raise CheckpointError(
            f"{adapter}: base model {wf} has sha256 {sha256(wf)[:16]}..., but the adapter was trained on "
            f"{want[:16]}...; point SETBLOCK_LORA_BASE at the base it was trained on"
        )
    return base


def load_base(checkpoint: Path) -> nn.Module:
    """A plain (non-adapter) checkpoint in float32, eval mode (GGUF weights are de-quantized)."""
    d, kw = _split(checkpoint)
    if kw:
        model = AutoModelForCausalLM.from_pretrained(d, **kw)  # already float32; no dtype cast on GGUF
        _plain(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    return model.eval()


def _plain(model: nn.Module) -> None:
    """Forget a GGUF origin: the weights are de-quantized float32, so the model saves (full
    fine-tuning) and takes adapters as the plain model it now is."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_model(checkpoint: Path) -> nn.Module:
    """The model in float32, eval mode; an adapter folder is merged into its base (plain weights)."""
    if not is_adapter(checkpoint):
        return load_base(checkpoint)
    from peft import PeftModel

    model = load_base(adapter_base(checkpoint))
    mask_id = load_tokenizer(checkpoint).mask_token_id
    if mask_id is not None:
        add_mask_row(model, mask_id)  # the row the adapter's trainable mask token was trained on
    merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    return merged.eval()


def load_tokenizer(checkpoint: Path):  # noqa: ANN201 - a transformers tokenizer
    """The fast tokenizer of the checkpoint (an adapter folder holds its own copy)."""
    d, kw = _split(checkpoint)
    return AutoTokenizer.from_pretrained(d, **kw)


def find_mask_token(tok, model: nn.Module, add: bool) -> tuple[int, str]:  # noqa: ANN001
    """The tokenizer's mask token, a reserved one, or (with ``add``) a new ``<|mask|>`` row."""
    if tok.mask_token_id is not None:
        return tok.mask_token_id, "tokenizer mask token"
    vocab = tok.get_vocab()
    for cand in RESERVED_MASK_CANDIDATES:
        if cand in vocab:
            return vocab[cand], f"reserved token {cand}"
    if not add:
        rows = model.get_input_embeddings().weight.shape[0]
        raise CheckpointError(
            f"no room for a mask token: the tokenizer has {len(tok)} tokens and the embedding {rows} rows, "
            "and none is a mask or reserved token; pass --add-mask-token to add <|mask|> (then fine-tune with SBD)"
        )
    tok.add_special_tokens({"mask_token": "<|mask|>"})
    new_id = tok.mask_token_id
    add_mask_row(model, new_id)
    return new_id, "added <|mask|>"


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
