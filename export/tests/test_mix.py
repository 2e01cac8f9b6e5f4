"""mix: the chat-formatted task mix of a pretrained chat model (tiny fixture, its chat template)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_checkpoint

from setblock_export import hf
from setblock_export.mix import GENERAL, GENERAL_HELD_OUT, chat_prompt, extract, instructions, make_mix


def test_the_mix_is_rendered_by_the_chat_template_and_holds_out_its_tests(tmp_path: Path, tokenizer_obj) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=256)
    counts = make_mix(ckpt, tmp_path / "mix", per_task=20, general_copies=2, max_new_tokens=4)
    train = [json.loads(x) for x in (tmp_path / "mix" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "mix" / "test.jsonl").read_text().splitlines()]
    tok = hf.load_tokenizer(ckpt)
    assert counts["train"] == len(train) == 4 * 20 + 2 * counts["general_kept"]
    assert {r["task"] for r in test} == {"gsm", "trace", "sort", "extract"} and len(test) == 4 * 300
    for r in train + test:
        assert r["prompt"] == chat_prompt(tok, r["user"])
        assert r["user"] in r["prompt"]
        if r["task"] == "extract":
            assert json.loads(r["response"]) == json.loads(r["answer"])
    held = {(r["task"], r["user"]) for r in test}
    assert not any((r["task"], r["user"]) in held for r in train)
    # the random fixture rarely ends an answer within 4 tokens: whatever it kept ended with EOS
    assert all(r["response"] for r in train if r["task"] == "general")
    # the base model's answers are reused, and the mix is rebuilt byte for byte
    again = make_mix(ckpt, tmp_path / "again", 20, 2, general_answers=tmp_path / "mix" / "general.jsonl")
    assert again["train_sha256"] == counts["train_sha256"]
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == (tmp_path / "mix" / "train.jsonl").read_bytes()


def test_general_topics_of_the_tests_are_never_trained() -> None:
    trained, held = set(instructions(GENERAL)), set(instructions(GENERAL_HELD_OUT))
    assert not trained & held and len(trained) >= 100 and len(held) >= 40


def test_extraction_texts_carry_every_field() -> None:
    import random

    rng = random.Random(0)
    for _ in range(200):
        q, a = extract(rng)
        fields = json.loads(a)
        for v in fields.values():
            assert (f"{v:.2f}" if isinstance(v, float) else str(v)) in q, (q, a)
