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


def test_prompt_ids_add_bos_only_where_the_prompt_lacks_it() -> None:
    """A rendered chat prompt that already starts with BOS (SmolLM2: <|im_start|>) gets no second
    one, as training lays prompts out (data.py); a bare prompt gets one."""
    ref = Reference.load(FIXTURE, onnx=True)
    bos = ref.m["eos_token_ids"][0]  # the fixture has no BOS: lend it a special token as one
    ref.m["bos_token_id"] = bos
    text = ref.tok.id_to_token(bos)
    ab = ref.tok.encode("ab", add_special_tokens=False).ids
    assert ref.prompt_ids("ab") == [bos, *ab]
    assert ref.prompt_ids(text + "ab") == [bos, *ab]
    kw = {"mode": "ntp", "block_size": 1, "gamma": 0.0, "max_new_tokens": 6}
    assert ref.generate_text(text + "ab", **kw)["tokens"] == ref.ntp([bos, *ab], 6).tokens
