"""The demo tasks (gsm, trace, sort): exact formats, seeded generators, data files.

Formats are fixed by issue 4; answers are graded by the text after ``#### ``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

NAMES = ("Ann Ben Cal Dan Eve Fay Gus Hal Ivy Jon Kim Lea Max Ned Ola Pam Raj Sam Tom Uma Vic Wes Yan Zoe").split()
ITEMS = "apples pens books cards eggs coins shells stamps marbles cookies rocks toys".split()

Problem = tuple[str, str]  # (question, answer)


def gsm(rng: random.Random) -> Problem:
    """A word problem: boxes, then 1-3 steps (give / buy / find), every total within [1, 99]."""
    n, m = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    t = a * b
    q = [f"{n} has {a} boxes of {item}. Each box holds {b} {item}."]
    ans = [f"{n} has {a}*{b}={t} {item}."]
    for _ in range(rng.randint(1, 3)):
        ops = []
        if t >= 2:
            ops.append("give")
        if any(t + c * p <= 99 for c in range(2, 5) for p in range(2, 6)):
            ops.append("buy")
        if t + 1 <= 99:
            ops.append("find")
        op = rng.choice(ops)
        if op == "give":
            g = rng.randint(1, min(t - 1, 20))
            q.append(f"{n} gives {g} {item} to {m}.")
            ans.append(f"After giving {g}, {t}-{g}={t - g}.")
            t -= g
        elif op == "buy":
            pairs = [(c, p) for c in range(2, 5) for p in range(2, 6) if t + c * p <= 99]
            c, p = rng.choice(pairs)
            q.append(f"{n} buys {c} packs with {p} {item} each.")
            ans.append(f"The packs add {c}*{p}={c * p}, so {t}+{c * p}={t + c * p}.")
            t += c * p
        else:
            f = rng.randint(1, min(20, 99 - t))
            q.append(f"{n} finds {f} more {item}.")
            ans.append(f"After finding {f}, {t}+{f}={t + f}.")
            t += f
    q.append(f"How many {item} does {n} have now?")
    ans.append(f"#### {t}")
    return " ".join(q), " ".join(ans)


def trace(rng: random.Random) -> Problem:
    """A program trace: a=a+b; b=b+C repeated N times."""
    a, b, n, c = rng.randint(0, 9), rng.randint(1, 9), rng.randint(3, 7), rng.randint(1, 5)
    q = f"a={a}; b={b}; for i in range({n}): a=a+b; b=b+{c}"
    steps = []
    for i in range(n):
        a += b
        b += c
        steps.append(f"i={i} a={a} b={b};")
    return q, " ".join(steps) + f" #### {a}"


def sort(rng: random.Random) -> Problem:
    """Sort 6-14 two-digit numbers; the final answer is the largest."""
    xs = [rng.randint(10, 99) for _ in range(rng.randint(6, 14))]
    s = sorted(xs)
    return "sort " + " ".join(map(str, xs)), " ".join(map(str, s)) + f" #### {s[-1]}"


TASKS: dict[str, Callable[[random.Random], Problem]] = {"gsm": gsm, "trace": trace, "sort": sort}
PROMPT = "Question: {q}\nAnswer:"


def final_answer(text: str) -> str | None:
    """The text after the last ``#### `` (up to the end of that line), or None."""
    if "#### " not in text:
        return None
    return text.rsplit("#### ", 1)[1].strip().split("\n")[0].strip()


def generate(task: str, count: int, seed: int, exclude: Iterable[str] = (), distinct: bool = True) -> list[Problem]:
    """`count` problems of `task` from `seed`, never a question in `exclude`.

    ``distinct=False`` allows repeats (training data: `trace` has only 2,250 questions in all).
    """
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Problem] = []
    fn = TASKS[task]
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > count * 50:
            raise RuntimeError(f"cannot find {count} distinct {task} problems outside the excluded set")
        q, a = fn(rng)
        if q in seen:
            continue
        if distinct:
            seen.add(q)
        out.append((q, a))
    return out


def write_jsonl(path: Path, problems: Iterable[tuple[str, Problem]]) -> int:
    """Write prompt/response/answer rows; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for task, (q, a) in problems:
            row = {
                "task": task,
                "question": q,
                "prompt": PROMPT.format(q=q),
                "response": " " + a,
                "answer": final_answer(a),
            }
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


# Seeds: test 101-103, validation 201-203, training 1-3 (documented in the model card).
TEST_SEEDS = {"gsm": 101, "trace": 102, "sort": 103}
VAL_SEEDS = {"gsm": 201, "trace": 202, "sort": 203}
TRAIN_SEEDS = {"gsm": 1, "trace": 2, "sort": 3}


def make_task_data(out: Path, train_per_task: int, test_per_task: int = 300, val_per_task: int = 150) -> None:
    """Write train.jsonl, val.jsonl and test.jsonl; held-out questions never appear in training."""
    held: dict[str, list[Problem]] = {}
    rows_test: list[tuple[str, Problem]] = []
    rows_val: list[tuple[str, Problem]] = []
    for task in TASKS:
        test = generate(task, test_per_task, TEST_SEEDS[task])
        val = generate(task, val_per_task, VAL_SEEDS[task], exclude=[q for q, _ in test])
        held[task] = test + val
        rows_test += [(task, p) for p in test]
        rows_val += [(task, p) for p in val]
    rows_train: list[tuple[str, Problem]] = []
    for task in TASKS:
        excl = [q for q, _ in held[task]]
        train = generate(task, train_per_task, TRAIN_SEEDS[task], exclude=excl, distinct=False)
        rows_train += [(task, p) for p in train]
    random.Random(0).shuffle(rows_train)
    write_jsonl(out / "train.jsonl", rows_train)
    write_jsonl(out / "val.jsonl", rows_val)
    write_jsonl(out / "test.jsonl", rows_test)
