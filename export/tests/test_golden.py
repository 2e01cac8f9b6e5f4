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
        elif c["mode"] == "sbd_verified":
            r = ref.sbd_verified(c["prompt_ids"], c["block_size"], c["gamma"], c["max_new_tokens"])
        else:
            r = ref.sbd(c["prompt_ids"], c["block_size"], c["gamma"], c["max_new_tokens"])
        assert (r.tokens, r.forwards) == (c["tokens"], c["forwards"]), c


def test_verified_sbd_is_ntp_greedy() -> None:
    """The reference's verified SBD gives its NTP output, over every block size and gamma of the
    fixture (whose random drafts are cut on nearly every block), and the fixture's cases say so."""
    cases = json.loads((FIXTURE / "golden.json").read_text())["cases"]
    ntp = {c["prompt"]: c["tokens"] for c in cases if c["mode"] == "ntp"}
    verified = [c for c in cases if c["mode"] == "sbd_verified"]
    assert len(verified) == len(ntp) * 16
    for c in verified:
        assert c["tokens"] == ntp[c["prompt"]], c
    ref = Reference.load(FIXTURE, onnx=True)
    ids = cases[0]["prompt_ids"]
    want = ref.ntp(ids, 9).tokens
    for k, g in [(2, 0.0), (4, 1000.0), (8, 0.5)]:
        for n in (1, 2, 9):
            assert ref.sbd_verified(ids, k, g, n).tokens == want[:n], (k, g, n)


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


def test_the_decode_command_runs_verified_sbd(capsys) -> None:  # noqa: ANN001
    """`python -m setblock_export decode --mode sbd_verified` prints NTP's tokens."""
    from setblock_export.__main__ import main

    args = ["decode", "--folder", str(FIXTURE), "--prompt", "sort 3 1 2", "--onnx", "--max-new-tokens", "12"]
    outs = []
    for mode in ("ntp", "sbd_verified"):
        assert main([*args, "--mode", mode, "--gamma", "1000"]) in (0, None)
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["tokens"] == outs[1]["tokens"] and outs[1]["forwards"] <= 13
