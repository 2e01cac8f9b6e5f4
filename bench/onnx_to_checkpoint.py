"""Rebuild a Hugging Face Llama checkpoint from an fp32 setblock model folder (the inverse of the
exporter), so that a peer (onnxruntime-genai's model builder) can build its own model from the
very weights a folder holds, when the training checkpoint is not on this machine (the demo's,
``runs/sbd-stage3``, takes hours of training to make again).

    .venv/bin/python bench/onnx_to_checkpoint.py models/demo runs/demo-checkpoint

The folder's graph keeps the norms and the head by name; its linear layers are unnamed ``MatMul``
weights, six per layer in graph order (Q|K packed, V, O, gate, up, down; stored ``[in, out]``).
The rebuilt model is checked against the folder: the logits of a 24-token forward through
PyTorch and through ONNX Runtime must agree (max abs diff <= 1e-3), or nothing is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def matmul_weights(graph: onnx.GraphProto, inits: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The initializer operand of every MatMul, in graph order (the head's excluded by the caller)."""
    out = []
    for node in graph.node:
        if node.op_type == "MatMul":
            w = [inits[i] for i in node.input if i in inits]
            if w:
                out.append(w[0])
    return out


def rebuild(folder: Path) -> tuple[LlamaForCausalLM, dict]:
    m = json.loads((folder / "setblock.json").read_text())
    if m["architecture"] != "LlamaForCausalLM" or m.get("quantization", "none") != "none":
        sys.exit(
            f"{folder}: only fp32 Llama folders can be rebuilt (architecture {m['architecture']}, "
            f"quantization {m.get('quantization')})"
        )
    model = onnx.load(str(folder / m["files"]["model"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    h, nl, nh, kv, hd = m["hidden_size"], m["num_layers"], m["num_heads"], m["num_kv_heads"], m["head_dim"]
    linear = [w for w in matmul_weights(model.graph, inits) if w.shape != (h, m["vocab_size"])]
    if len(linear) != 6 * nl:
        sys.exit(f"{folder}: expected 6 linear weights per layer ({6 * nl}), found {len(linear)}")
    inter = linear[3].shape[1]
    head = inits["model.lm_head.weight"]
    tied = not any(k.endswith("embed_tokens.weight") for k in inits)
    config = LlamaConfig(
        vocab_size=m["vocab_size"],
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=nl,
        num_attention_heads=nh,
        num_key_value_heads=kv,
        head_dim=hd,
        max_position_embeddings=m["max_positions"],
        tie_word_embeddings=tied,
        bos_token_id=m.get("bos_token_id"),
        eos_token_id=m["eos_token_ids"][0],
        pad_token_id=m.get("pad_token_id"),
        rope_theta=float(m.get("rope_theta", 10000.0)),
        rms_norm_eps=float(m.get("rms_norm_eps", 1e-6)),
    )
    llama = LlamaForCausalLM(config).eval()
    sd = {"lm_head.weight": head, "model.norm.weight": inits["model.model.norm.weight"]}
    sd["model.embed_tokens.weight"] = inits.get("model.model.embed_tokens.weight", head)
    for i in range(nl):
        qk, v, o, gate, up, down = linear[6 * i : 6 * i + 6]
        expect = [(h, nh * hd + kv * hd), (h, kv * hd), (nh * hd, h), (h, inter), (h, inter), (inter, h)]
        if [w.shape for w in (qk, v, o, gate, up, down)] != expect:
            sys.exit(f"{folder}: layer {i}'s weights are not in the expected order/shapes")
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = qk[:, : nh * hd].T
        sd[p + "self_attn.k_proj.weight"] = qk[:, nh * hd :].T
        sd[p + "self_attn.v_proj.weight"] = v.T
        sd[p + "self_attn.o_proj.weight"] = o.T
        sd[p + "mlp.gate_proj.weight"] = gate.T
        sd[p + "mlp.up_proj.weight"] = up.T
        sd[p + "mlp.down_proj.weight"] = down.T
        for n in ("input_layernorm", "post_attention_layernorm"):
            sd[p + n + ".weight"] = inits[f"model.{p}{n}.weight"]
    missing, unexpected = llama.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False
    )
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        sys.exit(f"{folder}: missing {missing}, unexpected {unexpected}")
    return llama, m


def check(llama: LlamaForCausalLM, folder: Path, m: dict) -> float:
    """Max abs logit difference of a 24-token causal forward, PyTorch against the folder's graph."""
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export.decode import Reference

    ref = Reference.load(folder, onnx=True)
    ids = [int(t) for t in np.random.default_rng(0).integers(3, m["vocab_size"], 24)]
    onnx_logits, _ = ref.step(ref.empty_cache(), ids, [])
    with torch.no_grad():
        torch_logits = llama(input_ids=torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    llama, m = rebuild(a.folder)
    diff = check(llama, a.folder, m)
    print(f"max abs logit diff, PyTorch rebuild vs {a.folder}: {diff:.2e}")
    if diff > 1e-3:
        sys.exit("the rebuilt checkpoint does not reproduce the folder; nothing written")
    llama.save_pretrained(a.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a.folder / f, a.out / f)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
