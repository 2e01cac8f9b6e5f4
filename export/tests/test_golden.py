"""The committed golden fixture reproduces: the reference decoder through the fixture's ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

from setblock_export.decode import Reference

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-llama"


def test_golden_cases_reproduce() -> None:
    cases = json.loads((FIXTURE / "golden.json").read_text())["cases"]
    ref = Reference.load(FIXTURE, onnx=True)
    for c in cases[::4]:
        if c["mode"] == "ntp":
            r = ref.ntp(c["prompt_ids"], c["max_new_tokens"])
        else:
            r = ref.sbd(c["prompt_ids"], c["block_size"], c["gamma"], c["max_new_tokens"])
        assert (r.tokens, r.forwards) == (c["tokens"], c["forwards"]), c
