"""`verify`: run the folder under onnxruntime and compare it with PyTorch.

Checks: (0) the project's forward against Hugging Face's own forward; (1) a causal prefill;
(2) an SBD step of k causal tokens plus k block slots, some revealed; (3) a block-only step;
(4) a 6-step decode through the cache against a no-cache recompute. float32 folders are judged by
the max abs difference of logits and presents (``tolerance``); quantized ones by top-1 agreement.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .decode import OnnxBackend, Reference, TorchBackend


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def run_checks(folder: Path, checkpoint: Path | None = None, seed: int = 0) -> list[dict]:
    """Each check's name, max abs diff (logits and presents) and top-1 agreement."""
    folder = Path(folder)
    m = json.loads((folder / "setblock.json").read_text())
    ckpt = Path(checkpoint or m["provenance"]["source_checkpoint"])
    added = m.get("mask_token_source") == "added <|mask|>"
    torch_ref = Reference(folder, TorchBackend(ckpt, m["mask_token_id"] if added else None))
    onnx_ref = Reference(folder, OnnxBackend(folder))
    rng = np.random.default_rng(seed)
    vocab = m["vocab_size"]
    mask_id = m["mask_token_id"]
    k = min(8, m["block_sizes"]["max"])
    prompt = [int(t) for t in rng.integers(0, vocab, 11) if t != mask_id][:10]
    out: list[dict] = []

    # (0) our forward vs Hugging Face's forward (causal)
    with torch.no_grad():
        hf = torch_ref.backend.model(torch.tensor([prompt])).logits[0].numpy()
    ours, _ = torch_ref.step(torch_ref.empty_cache(), prompt, [])
    out.append({"check": "forward vs Hugging Face (causal)", "max_abs_diff": _diff(hf, ours), "top1": _agree(hf, ours)})

    def compare(name: str, cache_t, cache_o, causal, block):  # noqa: ANN001, ANN202
        lt, pt = torch_ref.step(cache_t, causal, block)
        lo, po = onnx_ref.step(cache_o, causal, block)
        d = max([_diff(lt, lo)] + [_diff(a, b) for a, b in zip(pt, po, strict=True)])
        out.append({"check": name, "max_abs_diff": d, "top1": _agree(lt, lo)})
        return pt, po

    # (1) causal prefill
    e = torch_ref.empty_cache()
    pt, po = compare("causal prefill", e, e, prompt, [])
    ct = torch_ref.commit(e, pt, len(prompt))
    co = onnx_ref.commit(e, po, len(prompt))
    # (2) SBD step: k causal tokens + k slots, some revealed
    causal = [int(t) for t in rng.integers(3, vocab, k)]
    block = [int(t) if rng.random() < 0.4 else mask_id for t in rng.integers(3, vocab, k)]
    compare(f"SBD step ({k} causal + {k} slots)", ct, co, causal, block)
    # (3) block-only step
    compare(f"block-only step ({k} slots)", ct, co, [], block)
    # (3b) the rows the runtime reads: logits_index keeps the k slots of a causal+block step
    backend = onnx_ref.backend
    if isinstance(backend, OnnxBackend) and backend.has_index:
        lt, _ = torch_ref.step(ct, causal, block)
        ids, pos, mask = onnx_ref.inputs(co, causal, block)
        rows = np.arange(len(causal), len(causal) + len(block), dtype=np.int64)
        lo, _ = backend(ids, pos, mask, co, rows)
        d, a = _diff(lt[-k:], lo[0]), _agree(lt[-k:], lo[0])
        out.append({"check": f"logits_index keeps {k} of {2 * k} rows", "max_abs_diff": d, "top1": a})
    # (4) 6-step decode through the cache vs no-cache recompute (ONNX cache vs PyTorch full prefix)
    seq = list(prompt)
    cache = onnx_ref.commit(e, po, len(prompt))
    worst, agree = 0.0, []
    logits, _ = onnx_ref.step(e, prompt, [])
    for _ in range(6):
        t = int(logits[-1].argmax())
        seq.append(t)
        logits, pres = onnx_ref.step(cache, [t], [])
        cache = onnx_ref.commit(cache, pres, 1)
        full, _ = torch_ref.step(e, seq, [])
        worst = max(worst, _diff(full[-1], logits[-1]))
        agree.append(float(full[-1].argmax() == logits[-1].argmax()))
    out.append({"check": "6-step cached decode vs recompute", "max_abs_diff": worst, "top1": float(np.mean(agree))})
    return out


def verify_folder(folder: Path, checkpoint: Path | None, tolerance: float = 1e-3, min_agreement: float = 0.9) -> bool:
    """Print each check; True when all pass."""
    m = json.loads((Path(folder) / "setblock.json").read_text())
    quantized = m.get("quantization", "none") != "none"
    ok = True
    for r in run_checks(folder, checkpoint):
        is_hf = r["check"].startswith("forward vs")
        passed = r["max_abs_diff"] <= tolerance if (not quantized or is_hf) else r["top1"] >= min_agreement
        ok &= passed
        status = "ok  " if passed else "FAIL"
        print(f"{status} {r['check']:40s} max abs diff {r['max_abs_diff']:.2e}  top-1 {r['top1']:.0%}")
    crit = f"top-1 agreement >= {min_agreement:.0%}" if quantized else f"max abs diff <= {tolerance:g}"
    print(("verified" if ok else "verification FAILED") + f" ({crit})")
    return ok
