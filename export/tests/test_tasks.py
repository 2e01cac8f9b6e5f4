"""The demo tasks follow issue 4's formats exactly, and held-out questions never reach training."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from setblock_export.tasks import ITEMS, NAMES, final_answer, generate, gsm, make_task_data, sort, trace


def test_gsm_format_and_arithmetic() -> None:
    rng = random.Random(1)
    for _ in range(500):
        q, a = gsm(rng)
        m = re.match(r"(\w+) has (\d) boxes of (\w+)\. Each box holds (\d) \3\.", q)
        assert m, q
        n, x, item, y = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        assert n in NAMES and item in ITEMS and 2 <= x <= 9 and 2 <= y <= 9
        assert q.endswith(f"How many {item} does {n} have now?")
        t = x * y
        assert a.startswith(f"{n} has {x}*{y}={t} {item}.")
        steps = re.findall(
            r"After giving (\d+), (\d+)-(\d+)=(\d+)\.|The packs add (\d)\*(\d)=(\d+), so (\d+)\+(\d+)=(\d+)\."
            r"|After finding (\d+), (\d+)\+(\d+)=(\d+)\.",
            a,
        )
        assert 1 <= len(steps) <= 3
        for s in steps:
            if s[0]:
                g, before, g2, after = map(int, s[:4])
                assert before == t and g == g2 and 1 <= g <= min(t - 1, 20) and after == t - g
            elif s[4]:
                c, p, cp, before, cp2, after = map(int, s[4:10])
                assert 2 <= c <= 4 and 2 <= p <= 5 and cp == cp2 == c * p and before == t and after == t + cp
            else:
                f, before, f2, after = map(int, s[10:14])
                assert 1 <= f <= 20 and f == f2 and before == t and after == t + f
            t = after
            assert 1 <= t <= 99
        assert a.endswith(f"#### {t}") and final_answer(a) == str(t)


def test_trace_and_sort_match_the_examples() -> None:
    rng = random.Random(2)
    for _ in range(300):
        q, a = trace(rng)
        m = re.fullmatch(r"a=(\d); b=(\d); for i in range\((\d)\): a=a\+b; b=b\+(\d)", q)
        assert m, q
        av, bv, n, c = map(int, m.groups())
        parts = []
        for i in range(n):
            av, bv = av + bv, bv + c
            parts.append(f"i={i} a={av} b={bv};")
        assert a == " ".join(parts) + f" #### {av}"
        q, a = sort(rng)
        xs = list(map(int, q.split()[1:]))
        assert 6 <= len(xs) <= 14 and all(10 <= x <= 99 for x in xs)
        assert a == " ".join(map(str, sorted(xs))) + f" #### {max(xs)}"


def test_held_out_questions_never_reach_training(tmp_path: Path) -> None:
    make_task_data(tmp_path, train_per_task=400, test_per_task=30, val_per_task=20)
    rows = {
        n: [json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("train", "val", "test")
    }
    train_q = {r["question"] for r in rows["train"]}
    held = {r["question"] for r in rows["test"] + rows["val"]}
    assert len(rows["test"]) == 90 and not train_q & held
    r = rows["test"][0]
    assert r["prompt"] == f"Question: {r['question']}\nAnswer:" and r["response"].startswith(" ")
    assert final_answer(r["response"]) == r["answer"]
    assert generate("sort", 5, 101) == generate("sort", 5, 101)  # seeded
