"""`golden`: the reference decoder's tokens and forward counts, for the Rust tests to match."""

from __future__ import annotations

import json
from pathlib import Path

from .decode import Reference

PROMPTS = [
    "Question: sort 42 17 88 17 30 61\nAnswer:",
    "Question: a=2; b=6; for i in range(3): a=a+b; b=b+4\nAnswer:",
    "Ned has 5 boxes of eggs.",
    "Größe: 日本語 🙂 naïve café",
    "x",
]
BLOCK_SIZES = [2, 4, 8, 16]
GAMMAS = [0.0, 0.5, 2.0, 1000.0]
MAX_NEW = 24


def write_golden(folder: Path, out: Path) -> None:
    """Decode every prompt in NTP mode, and in SBD and verified SBD mode over block sizes x gammas
    (ONNX backend)."""
    ref = Reference.load(folder, onnx=True)
    cases = []
    for prompt in PROMPTS:
        ids = ref.tok.encode(prompt, add_special_tokens=False).ids
        r = ref.ntp(ids, MAX_NEW)
        base = {"prompt": prompt, "prompt_ids": ids, "max_new_tokens": MAX_NEW}
        cases.append({**base, "mode": "ntp", "block_size": 1, "gamma": 0.0, "tokens": r.tokens, "forwards": r.forwards})
        for k in BLOCK_SIZES:
            for g in GAMMAS:
                r = ref.sbd(ids, k, g, MAX_NEW)
                cases.append(
                    {
                        **base,
                        "mode": "sbd",
                        "block_size": k,
                        "gamma": g,
                        "tokens": r.tokens,
                        "forwards": r.forwards,
                        "revealed_per_forward": r.per_forward,
                    }
                )
                r = ref.sbd_verified(ids, k, g, MAX_NEW)
                case = {"mode": "sbd_verified", "block_size": k, "gamma": g, "tokens": r.tokens, "forwards": r.forwards}
                cases.append({**base, **case})
    Path(out).write_text(json.dumps({"generator": "python -m setblock_export golden", "cases": cases}, indent=1))
